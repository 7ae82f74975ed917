"""User mistakes through the command line: one line on stderr, exit code 2, no file touched."""
from __future__ import annotations

import shutil

import pytest
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, snapshot, write_npz_dataset, write_yaml

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


def test_teacher_method_without_a_teacher(tmp_path, existing_run):
    output_dir, before = existing_run
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, distill={"method": "hinton"}))
    assert_user_error(invoke("distill", config, "--overwrite"), "'hinton' needs a teacher", "distill.teacher")
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
