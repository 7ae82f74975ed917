"""The command line: train -> distill -> evaluate -> report on digits, and one-line errors for user mistakes.

Every run is tiny (an MLP with 16 hidden units on scikit-learn's 8x8 digits, 1-3 epochs, no latency
measurement) so the whole file runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from distillery.cli import app

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.safetensors", "model.json", "last.safetensors", "last.json",
             "evaluation.json")
MODEL_JSON_KEYS = ("format", "version", "role", "architecture", "input_shape", "num_classes", "class_names",
                   "preprocessing", "dataset", "parameters", "epoch", "metrics", "config")
EVALUATION_KEYS = ("name", "role", "split", "samples", "accuracy", "nll", "ece", "parameters", "size_bytes",
                   "reliability")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS_TEST_SAMPLES = 360  # ceil(20% of scikit-learn's 1797 digits)
TEACHER_EPOCHS = 2

runner = CliRunner()


# ---------------------------------------------------------------- helpers


def invoke(*args: str | Path):
    return runner.invoke(app, [str(arg) for arg in args])


def run_config(output_dir: Path, **sections) -> dict:
    """A tiny, fast run configuration; keyword arguments replace whole top-level sections."""
    document = {
        "output_dir": str(output_dir),
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.01},
        "measure_latency": False,
        "progress": False,
    }
    document.update(sections)
    return document


def write_yaml(path: Path, document: dict | str) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def assert_ok(result) -> None:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
    )


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one non-empty stderr line starting with 'error:' that holds every fragment, no traceback."""
    # CliRunner catches an escaped exception itself (exit code 1, nothing printed): that is a traceback for a user.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"uncaught {result.exception!r}: a user would see a traceback, not one 'error:' line")
    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    message = lines[0]
    assert message.startswith("error: ") and len(message) > len("error: ") + 10, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in result.stdout + result.stderr
    return message


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, to prove a failed command left a directory alone."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.iterdir()) if path.is_file()}


def write_npz_dataset(directory: Path, num_classes: int = 3, seed: int = 0) -> Path:
    """train.npz / test.npz with 8x8 one-channel images (like digits) and labels 0..num_classes-1."""
    directory.mkdir(parents=True)
    generator = np.random.default_rng(seed)
    for name, count in (("train", 90), ("test", 30)):
        inputs = generator.random((count, 1, 8, 8), dtype=np.float32)
        labels = np.arange(count, dtype=np.int64) % num_classes  # every class present
        np.savez(directory / f"{name}.npz", x=inputs, y=labels)
    return directory


# ---------------------------------------------------------------- runs shared by many tests (trained once)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def teacher_run(workspace) -> Path:
    """A digits 'teacher' trained through `distillery train` (2 epochs, from the YAML, no override)."""
    output_dir = workspace / "teacher"
    config = write_yaml(workspace / "teacher.yaml",
                        run_config(output_dir, train={"epochs": TEACHER_EPOCHS, "batch_size": 128, "lr": 0.01}))
    result = invoke("train", config)
    assert_ok(result)
    return output_dir


@pytest.fixture(scope="module")
def distillation(workspace, teacher_run) -> tuple[Path, dict, dict]:
    """A digits student distilled from `teacher_run` (Hinton), with the teacher's snapshots before and after."""
    output_dir = workspace / "student"
    config = write_yaml(workspace / "student.yaml", run_config(
        output_dir, model={"name": "mlp", "hidden": [8]},
        distill={"teacher": str(teacher_run), "method": "hinton", "temperature": 4.0, "alpha": 0.5}))
    teacher_before = snapshot(teacher_run)
    result = invoke("distill", config)
    assert_ok(result)
    assert str(output_dir) in result.stdout and "test accuracy" in result.stdout
    return output_dir, teacher_before, snapshot(teacher_run)


@pytest.fixture(scope="module")
def student_run(distillation) -> Path:
    return distillation[0]


@pytest.fixture(scope="module")
def npz_teacher_run(workspace) -> Path:
    """A teacher trained on a 3-class .npz dataset with digit-shaped (1x8x8) inputs."""
    data_dir = write_npz_dataset(workspace / "three-classes")
    output_dir = workspace / "npz-teacher"
    config = write_yaml(workspace / "npz-teacher.yaml",
                        run_config(output_dir, data={"dataset": "npz", "path": str(data_dir)}))
    assert_ok(invoke("train", config))
    return output_dir


@pytest.fixture
def existing_run(tmp_path, teacher_run) -> tuple[Path, dict]:
    """A private copy of a finished run and its snapshot: bad commands aimed at it must leave it byte-identical."""
    copy = tmp_path / "existing"
    shutil.copytree(teacher_run, copy)
    return copy, snapshot(copy)


# ---------------------------------------------------------------- the happy path


def test_train_writes_every_documented_file(teacher_run):
    assert all((teacher_run / name).is_file() for name in RUN_FILES), sorted(p.name for p in teacher_run.iterdir())
    assert not list(teacher_run.glob("*.tmp")), "temporary files left behind"

    records = [json.loads(line) for line in (teacher_run / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == list(range(1, TEACHER_EPOCHS + 1))
    for record in records:
        assert {"lr", "epoch_time_s", "train/loss", "train/ce", "val/accuracy", "val/loss"} <= set(record)
        assert not any(key.startswith("train/kd") for key in record), "a supervised run has no KD term"

    metadata = json.loads((teacher_run / "model.json").read_text())
    assert set(MODEL_JSON_KEYS) <= set(metadata), set(MODEL_JSON_KEYS) - set(metadata)
    assert metadata["format"] == "distillery-checkpoint" and metadata["version"] == 1
    assert metadata["architecture"] == {"name": "mlp", "hidden": [16]}
    assert metadata["input_shape"] == [1, 8, 8] and metadata["num_classes"] == 10
    assert metadata["class_names"] == [str(digit) for digit in range(10)]
    assert metadata["dataset"]["name"] == "digits"
    assert 1 <= metadata["epoch"] <= TEACHER_EPOCHS

    resolved = yaml.safe_load((teacher_run / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == TEACHER_EPOCHS
    assert resolved["train"]["optimizer"] == "adamw"  # a default, filled in
    assert resolved["data"]["dataset"] == "digits" and resolved["distill"] is None

    evaluation = json.loads((teacher_run / "evaluation.json").read_text())
    assert set(EVALUATION_KEYS) <= set(evaluation), set(EVALUATION_KEYS) - set(evaluation)
    assert evaluation["split"] == "test" and evaluation["samples"] == DIGITS_TEST_SAMPLES
    assert "agreement" not in evaluation and "latency" not in evaluation  # no teacher, measure_latency: false


def test_train_without_role_records_a_documented_role(teacher_run):
    """docs/run-directory.md: model.json's role is "teacher" | "scratch" | "distilled"; the report keys on it."""
    metadata = json.loads((teacher_run / "model.json").read_text())
    evaluation = json.loads((teacher_run / "evaluation.json").read_text())
    assert metadata["role"] in ("teacher", "scratch", "distilled"), metadata["role"]
    assert evaluation["role"] == metadata["role"]


@pytest.mark.parametrize("epochs", [1, 3])
def test_set_override_is_honoured(tmp_path, epochs):
    output_dir = tmp_path / "run"
    config = write_yaml(tmp_path / "run.yaml", run_config(output_dir))  # says epochs: 1
    result = invoke("train", config, "--set", f"train.epochs={epochs}", "--set", "train.lr=0.02", "--quiet")
    assert_ok(result)
    assert len((output_dir / "metrics.jsonl").read_text().splitlines()) == epochs
    resolved = yaml.safe_load((output_dir / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == epochs and resolved["train"]["lr"] == 0.02
    assert json.loads((output_dir / "model.json").read_text())["config"]["train"]["epochs"] == epochs


def test_distill_writes_a_distilled_run(distillation, teacher_run):
    student_run, teacher_before, teacher_after = distillation
    assert teacher_after == teacher_before, "distilling must only read the teacher's run"
    assert all((student_run / name).is_file() for name in RUN_FILES)
    metadata = json.loads((student_run / "model.json").read_text())
    assert metadata["role"] == "distilled"
    assert metadata["architecture"] == {"name": "mlp", "hidden": [8]}
    assert metadata["config"]["distill"]["teacher"] == str(teacher_run)
    assert metadata["config"]["distill"]["method"] == "hinton"
    # The student reuses the teacher's normalisation, so both see identical inputs.
    assert metadata["preprocessing"] == json.loads((teacher_run / "model.json").read_text())["preprocessing"]
    records = [json.loads(line) for line in (student_run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and {"train/loss", "train/ce", "train/kd"} <= set(records[0])
    evaluation = json.loads((student_run / "evaluation.json").read_text())
    assert 0.0 <= evaluation["agreement"] <= 1.0


def test_evaluate_prints_json(student_run, teacher_run):
    result = invoke("evaluate", student_run, "--teacher", teacher_run, "--no-latency", "--json")
    assert_ok(result)
    evaluation = json.loads(result.stdout)
    for key in ("accuracy", "nll", "ece", "agreement"):
        assert isinstance(evaluation[key], float), (key, evaluation.get(key))
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and 0.0 <= evaluation["agreement"] <= 1.0
    assert evaluation["nll"] > 0.0 and 0.0 <= evaluation["ece"] <= 1.0
    assert evaluation["samples"] == DIGITS_TEST_SAMPLES and "latency" not in evaluation
    # The same checkpoint on the same test set must give the numbers the run recorded.
    recorded = json.loads((student_run / "evaluation.json").read_text())
    for key in ("accuracy", "nll", "ece", "agreement"):
        assert evaluation[key] == pytest.approx(recorded[key], rel=1e-5, abs=1e-6), key


def test_report_writes_html_markdown_and_plots(tmp_path, teacher_run, student_run):
    output = tmp_path / "report"
    result = invoke("report", teacher_run, student_run, "-o", output)
    assert_ok(result)
    assert "report.html" in result.stdout
    for name in ("learning_curves.png", "comparison.png", "reliability.png"):
        assert (output / name).read_bytes().startswith(PNG_MAGIC), name
    markdown = (output / "report.md").read_text()
    html = (output / "report.html").read_text()
    for name in (teacher_run.name, student_run.name):
        assert f"### {name}" in markdown and f"<h3>{name}</h3>" in html
    assert html.count("data:image/png;base64,") == 3


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"]], ids=["app", "demo"])
def test_help_exits_zero_and_lists(args):
    result = invoke(*args)
    assert_ok(result)
    if args == ["--help"]:
        for command in ("train", "distill", "evaluate", "report", "demo"):
            assert command in result.stdout, command
    else:
        for option in ("--dataset", "--output-dir", "--overwrite", "--seed"):
            assert option in result.stdout, option


# ---------------------------------------------------------------- user mistakes: one line, exit 2, nothing touched


def test_unknown_config_key_suggests_the_right_one(tmp_path, teacher_run, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml",
                        run_config(output_dir, distill={"teacher": str(teacher_run), "temprature": 2}))
    assert_user_error(invoke("distill", config, "--overwrite"), "distill.temprature", "did you mean 'temperature'")
    assert snapshot(output_dir) == before


def test_wrong_type_names_the_key(tmp_path, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, train={"epochs": "many"}))
    assert_user_error(invoke("train", config, "--overwrite"), "train.epochs", "'many'")
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("key, value, expected", [
    ("temperature", 0, "greater than 0"),
    ("temperature", -1, "greater than 0"),
    ("alpha", 1.5, "less than or equal to 1"),
    ("alpha", -0.1, "greater than or equal to 0"),
])
def test_out_of_range_distill_values(tmp_path, teacher_run, existing_run, key, value, expected):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml",
                        run_config(output_dir, distill={"teacher": str(teacher_run), key: value}))
    assert_user_error(invoke("distill", config, "--overwrite"), f"distill.{key}", f"= {value}", expected)
    assert snapshot(output_dir) == before


def test_missing_teacher_checkpoint(tmp_path, existing_run):
    output_dir, before = existing_run
    missing = tmp_path / "no-such-teacher"
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, distill={"teacher": str(missing)}))
    assert_user_error(invoke("distill", config, "--overwrite"), str(missing), "does not exist")
    assert snapshot(output_dir) == before


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    assert_user_error(invoke("train", missing), str(missing), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_malformed_yaml(tmp_path, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml", f"output_dir: {output_dir}\na: [1, 2\n")
    assert_user_error(invoke("train", config, "--overwrite"), str(config), "not valid YAML")
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("direction", ["npz-teacher-digits-student", "digits-teacher-npz-student"])
def test_teacher_and_student_class_counts_differ(tmp_path, teacher_run, npz_teacher_run, existing_run, direction):
    output_dir, before = existing_run
    if direction == "npz-teacher-digits-student":
        teacher, data, counts = npz_teacher_run, {"dataset": "digits"}, ("predicts 3 classes", "has 10")
    else:
        data_dir = write_npz_dataset(tmp_path / "three-classes")
        teacher, data, counts = teacher_run, {"dataset": "npz", "path": str(data_dir)}, ("predicts 10 classes", "has 3")
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, data=data, distill={"teacher": str(teacher)}))
    assert_user_error(invoke("distill", config, "--overwrite"), str(teacher), *counts)
    assert snapshot(output_dir) == before


def test_finished_run_is_refused_then_replaced_with_overwrite(tmp_path, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "again.yaml", run_config(output_dir))
    assert_user_error(invoke("train", config), str(output_dir), "already holds a finished run", "--overwrite")
    after = snapshot(output_dir)
    for name in ("model.safetensors", "model.json", "metrics.jsonl"):
        assert after[name] == before[name], f"{name} changed"
    assert after == before

    assert_ok(invoke("train", config, "--overwrite"))
    assert len((output_dir / "metrics.jsonl").read_text().splitlines()) == 1  # the old run had TEACHER_EPOCHS
    assert snapshot(output_dir)["model.json"] != before["model.json"]


@pytest.mark.parametrize("command, with_distill, expected", [
    ("distill", False, "no distill: section"),
    ("train", True, "has a distill: section"),
])
def test_command_and_distill_section_must_match(tmp_path, teacher_run, existing_run, command, with_distill, expected):
    output_dir, before = existing_run
    sections = {"distill": {"teacher": str(teacher_run)}} if with_distill else {}
    config = write_yaml(tmp_path / "mismatch.yaml", run_config(output_dir, **sections))
    assert_user_error(invoke(command, config, "--overwrite"), str(config), expected)
    assert snapshot(output_dir) == before


def test_set_without_equals(tmp_path, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "run.yaml", run_config(output_dir))
    assert_user_error(invoke("train", config, "--overwrite", "--set", "train.epochs"),
                      "'train.epochs'", "key=value")
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("overrides, fragment", [
    (["train.epochs=[1"], "train.epochs"),                  # a value that is not valid YAML
    (["train.lr=0.1", "train.lr.warmup=2"], "train.lr"),    # a scalar then a key below it
], ids=["unparsable-value", "key-below-a-scalar"])
def test_malformed_set_value_is_a_user_error(tmp_path, existing_run, overrides, fragment):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "run.yaml", run_config(output_dir))
    arguments = [argument for override in overrides for argument in ("--set", override)]
    assert_user_error(invoke("train", config, "--overwrite", *arguments), fragment)
    assert snapshot(output_dir) == before


def test_corrupted_teacher_checkpoint(tmp_path, teacher_run, existing_run):
    output_dir, before = existing_run
    teacher = tmp_path / "corrupted-teacher"
    shutil.copytree(teacher_run, teacher)
    (teacher / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors file\xff" * 4)
    config = write_yaml(tmp_path / "distill.yaml", run_config(output_dir, distill={"teacher": str(teacher)}))
    assert_user_error(invoke("distill", config, "--overwrite"), str(teacher / "model.safetensors"), "corrupted")
    assert snapshot(output_dir) == before


def test_evaluate_on_a_directory_that_is_not_a_run(tmp_path):
    directory = tmp_path / "not-a-run"
    directory.mkdir()
    (directory / "notes.txt").write_text("hello")
    before = snapshot(directory)
    assert_user_error(invoke("evaluate", directory, "--no-latency"), str(directory), "holds no model.safetensors")
    assert snapshot(directory) == before


@pytest.mark.parametrize("kind", ["empty", "unfinished"])
def test_report_on_a_directory_that_is_not_a_finished_run(tmp_path, teacher_run, kind):
    directory = tmp_path / "run"
    if kind == "empty":
        directory.mkdir()
    else:  # a run that stopped after its first epoch: no model.json, no evaluation.json
        shutil.copytree(teacher_run, directory)
        for name in ("model.json", "model.safetensors", "evaluation.json"):
            (directory / name).unlink()
    output = tmp_path / "report"
    assert_user_error(invoke("report", teacher_run, directory, "-o", output),
                      str(directory), "not a finished distillery run", "model.json")
    assert not output.exists(), "a failed report must not leave a half-written output directory"


@pytest.mark.parametrize("model, fragments", [
    ({"name": "transformer"}, ("'transformer'", "mlp")),
    ({"name": "mlp", "hiden": [3]}, ("'hiden'", "did you mean 'hidden'")),
], ids=["unknown-name", "unknown-keyword"])
def test_unknown_model(tmp_path, existing_run, model, fragments):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, model=model))
    assert_user_error(invoke("train", config, "--overwrite"), *fragments)
    assert snapshot(output_dir) == before


def test_unknown_dataset(tmp_path, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, data={"dataset": "imagenet"}))
    assert_user_error(invoke("train", config, "--overwrite"), "'imagenet'", "digits")
    assert snapshot(output_dir) == before


# ---------------------------------------------------------------- the real process


@pytest.mark.parametrize("train, overrides, fragment", [
    ({"epoch": 1}, [], "did you mean 'epochs'"),
    ({"epochs": 1}, ["--set", "train.batch_size=[1"], "train.batch_size"),
], ids=["unknown-key", "unparsable-set-value"])
def test_python_dash_m_prints_one_line_without_traceback(tmp_path, train, overrides, fragment):
    output_dir = tmp_path / "out"
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, train=train))
    command = [sys.executable, "-m", "distillery", "train", str(config), *overrides]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "Traceback" not in completed.stderr + completed.stdout, completed.stderr
    assert completed.returncode == 2, (completed.returncode, completed.stderr)
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert completed.stdout == ""
    assert not output_dir.exists()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, tmp_path):
    import distillery.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_demo", interrupted)
    result = CliRunner().invoke(cli.app, ["demo", "--output-dir", str(tmp_path), "-q"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.output
