"""The command line: train -> distill -> evaluate -> report on digits, through the runner and a real process.

Every run is tiny (an MLP with 16 hidden units on scikit-learn's 8x8 digits, 1-3 epochs, no latency
measurement); the shared runs are fixtures in conftest.py. User mistakes are in test_cli_errors.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from cli_helpers import (
    DIGITS_TEST_SAMPLES,
    EVALUATION_KEYS,
    MODEL_JSON_KEYS,
    PNG_MAGIC,
    RUN_FILES,
    TEACHER_EPOCHS,
    assert_ok,
    invoke,
    run_config,
    write_yaml,
)
from typer.testing import CliRunner

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
    for name in ("learning_curves.png", "comparison.png", "reliability.png", "confusion.png"):
        assert (output / name).read_bytes().startswith(PNG_MAGIC), name
    markdown = (output / "report.md").read_text()
    html = (output / "report.html").read_text()
    for name in (teacher_run.name, student_run.name):
        assert f"### {name}" in markdown and f"<h3>{name}</h3>" in html
    assert html.count("data:image/png;base64,") == 4


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


# ---------------------------------------------------------------- the real process

HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib", "transformers", "datasets", "scipy", "sklearn", "pyarrow")


def test_the_command_line_loads_no_heavy_library_until_a_command_runs():
    # Each takes from a tenth of a second to seconds to import; `distillery --help` and a typo must answer at once.
    code = f"import sys, distillery.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("args, expected", [(["--help"], "distill"), (["--version"], "distillery 0.1.0"),
                                            (["trian"], "No such command")], ids=["help", "version", "typo"])
def test_help_version_and_a_typo_answer_from_a_real_process(args, expected):
    completed = subprocess.run([sys.executable, "-m", "distillery", *args], capture_output=True, text=True,
                               timeout=60)
    assert expected in completed.stdout + completed.stderr
    assert completed.returncode == (2 if args == ["trian"] else 0)
    assert "Traceback" not in completed.stderr




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

    monkeypatch.setattr("distillery.app.workflows.demo.demo", interrupted)
    result = CliRunner().invoke(cli.app, ["demo", "--output-dir", str(tmp_path), "-q"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.output
