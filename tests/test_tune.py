"""distillery tune on digits: the files, the choice by validation accuracy, the scratch reference, reuse, errors."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import PNG_MAGIC, assert_ok, assert_user_error, invoke, snapshot, write_yaml

import distillery
from distillery.app.config.files import load_config
from distillery.app.workflows.run import run
from distillery.app.workflows.tune import DEFAULT_GRID, check_grid, parse_grid, plan_points, point_name

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DISTILL = CONFIGS / "digits_distill.yaml"
GRID = ["--grid", "distill.temperature=1,4", "--grid", "distill.alpha=0.1,0.9"]
POINTS = ["scratch", "T-1_alpha-0.1", "T-1_alpha-0.9", "T-4_alpha-0.1", "T-4_alpha-0.9"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tune-teacher")
    return run(load_config(CONFIGS / "digits_teacher.yaml", [f"output_dir={out / 'teacher'}", "train.epochs=3",
                                                               "progress=false", "measure_latency=false"]))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A teacher-output cache of this module's own, so its entries can be counted."""
    directory = tmp_path_factory.mktemp("tune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_CACHE", str(directory))
        yield directory


def tune_args(teacher: Path, output_dir: Path, *extra: str) -> list:
    return ["tune", DISTILL, *GRID, "--epochs", "2", "--output-dir", output_dir, "--quiet",
            "--set", f"distill.teacher={teacher}", *extra]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, teacher, cache_dir):
    """A 2x2 tune through the CLI (2 epochs per point), with the command's result."""
    output_dir = tmp_path_factory.mktemp("tune") / "tune"
    result = invoke(*tune_args(teacher, output_dir))
    assert_ok(result)
    return output_dir, result


def val_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "model.json").read_text())["metrics"]["val/accuracy"]


def test_tune_writes_a_run_per_point_and_its_files(tuned):
    output_dir, _ = tuned
    for name in POINTS:
        assert (output_dir / name / "model.json").is_file(), name
        assert load_config(output_dir / name / "config.yaml").train.epochs == 2
    record = json.loads((output_dir / "tune.json").read_text())
    assert record["status"] == "finished" and record["selected_by"] == "val_accuracy"
    assert record["grid"] == {"distill.temperature": [1, 4], "distill.alpha": [0.1, 0.9]}
    assert [point["name"] for point in record["points"]] == POINTS
    assert all(0 <= point["test_accuracy"] <= 1 and point["train_seconds"] > 0 for point in record["points"])
    assert record["wall_seconds"] > 0
    assert (output_dir / "tune.png").read_bytes().startswith(PNG_MAGIC)
    table = (output_dir / "tune.md").read_text()
    assert table.count("\n| ") == 1 + len(POINTS)  # the header and one row per point


def test_the_best_is_the_argmax_of_validation_accuracy(tuned):
    output_dir, result = tuned
    accuracies = {name: val_accuracy(output_dir / name) for name in POINTS[1:]}
    best = max(accuracies, key=accuracies.get)
    record = json.loads((output_dir / "tune.json").read_text())
    assert record["best"] == best
    assert {point["name"]: point["val_accuracy"] for point in record["points"][1:]} == accuracies
    table_rows = [line for line in (output_dir / "tune.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert table_rows[[row.endswith(f"| {best} |") for row in table_rows].index(True)].startswith("| **best**")
    shown = [float(row.split("|")[4].strip().rstrip("%")) for row in table_rows]
    assert shown == sorted(shown, reverse=True)
    # best.yaml is the full config: the best settings at the config's own epochs and output_dir.
    best_config = load_config(output_dir / "best.yaml")
    settings = next(point["settings"] for point in record["points"] if point["name"] == best)
    assert (best_config.distill.temperature, best_config.distill.alpha) == (
        settings["distill.temperature"], settings["distill.alpha"])
    assert best_config.train.epochs == load_config(DISTILL).train.epochs
    assert best_config.output_dir == load_config(DISTILL).output_dir
    assert f"{accuracies[best]:.1%} val vs {val_accuracy(output_dir / 'scratch'):.1%} from scratch" in result.stdout
    # With the difference told from noise on the validation images both were measured on.
    samples = json.loads((output_dir / "scratch" / "model.json").read_text())["metrics"]["val/samples"]
    assert samples > 0 and f"of {samples:,} validation images; 95% interval" in result.stdout


def test_the_scratch_reference_has_the_same_budget_and_no_teacher(tuned):
    output_dir, result = tuned
    scratch = load_config(output_dir / "scratch" / "config.yaml")
    distilled = load_config(output_dir / "T-1_alpha-0.1" / "config.yaml")
    assert scratch.distill is None and scratch.role == "scratch"
    assert (scratch.train, scratch.model, scratch.data) == (distilled.train, distilled.model, distilled.data)
    assert "from scratch" in (output_dir / "tune.md").read_text()
    assert result.stderr.count("from scratch") == len(POINTS)  # one progress line per point, each compares


def test_the_teacher_runs_once_for_all_points(tuned, cache_dir):
    # One cache entry (logits and manifest) serves all four distilled points: the fingerprint is shared.
    assert len(list(cache_dir.glob("*.npy"))) == 1
    assert len(list(cache_dir.glob("*.json"))) == 1


def test_a_second_tune_reuses_every_finished_point(tuned, teacher, tmp_path):
    output_dir, _ = tuned
    copy = tmp_path / "tune"
    shutil.copytree(output_dir, copy)
    shutil.rmtree(copy / "T-4_alpha-0.1")  # as if interrupted before this point finished
    before = {name: (copy / name / "model.safetensors").stat().st_mtime_ns for name in POINTS if name != "T-4_alpha-0.1"}
    result = invoke(*tune_args(teacher, copy))
    assert_ok(result)
    reused = {point["name"]: point["reused"] for point in json.loads((copy / "tune.json").read_text())["points"]}
    assert reused == {name: name != "T-4_alpha-0.1" for name in POINTS}
    assert {name: (copy / name / "model.safetensors").stat().st_mtime_ns for name in before} == before
    assert result.stderr.count("(reused)") == len(POINTS) - 1


def test_python_api_with_final_run(teacher, tmp_path):
    config = load_config(DISTILL, [f"distill.teacher={teacher}", "train.epochs=2", "progress=false",
                                   f"output_dir={tmp_path / 'distilled'}"])
    result = distillery.tune(config, {"distill.alpha": [0.0, 0.9]}, epochs=1, output_dir=tmp_path / "tune",
                             final=True)
    assert [point.name for point in result.points] == ["alpha-0.0", "alpha-0.9"]
    assert result.best.val_accuracy == max(point.val_accuracy for point in result.points)
    assert result.pays == (result.best.val_accuracy > result.scratch.val_accuracy)
    final = load_config(result.final_run / "config.yaml")
    assert final.train.epochs == 2 and final.distill.alpha == result.best_config.distill.alpha
    assert not (tmp_path / "tune" / "tune.png").exists()  # a heat map needs two keys


def test_parse_grid_reads_values_as_yaml():
    assert parse_grid(["distill.temperature=1,2.5", "distill.method=hinton,dist", "model.hidden=[16],[8, 8]"]) == {
        "distill.temperature": [1, 2.5], "distill.method": ["hinton", "dist"], "model.hidden": [[16], [8, 8]]}
    assert point_name({"model.hidden": [8, 8], "distill.method": "dist"}) == "hidden-8-8_method-dist"
    assert check_grid(DEFAULT_GRID, 64) == {"distill.temperature": [1, 2, 4], "distill.alpha": [0.1, 0.5, 0.9]}


def test_epochs_shorten_every_point_but_a_grid_over_the_budget(tmp_path):
    planned = plan_points(load_config(DISTILL), {"train.epochs": [1, 3]}, 2, tmp_path)
    assert [(name, config.train.epochs) for name, _, config in planned] == [
        ("scratch", 2), ("epochs-1", 1), ("epochs-3", 3)]
    assert [config.output_dir for _, _, config in planned] == [str(tmp_path / name) for name, _, _ in planned]


def test_help_names_the_default_grid():
    result = invoke("tune", "--help")
    assert_ok(result)
    assert "distill.temperature=1,2,4" in result.stdout and "distill.alpha=0.1,0.5,0.9" in result.stdout


@pytest.mark.parametrize("extra, fragments", [
    (["--grid", "distill.temprature=1,2"], ["grid point distill.temprature=1", "did you mean 'temperature'"]),
    (["--grid", "distill.alpha="], ["distill.alpha has no values"]),
    (["--grid", "distill.alpha"], ["not KEY=V1,V2"]),
    (["--grid", "distill.temperature=2,hot"], ["grid point distill.temperature=hot", "distill.temperature"]),
    (["--grid", "train.lr=" + ",".join(str(n) for n in range(1, 10)), "--grid", "distill.alpha=" +
      ",".join(f"0.{n}" for n in range(8))], ["72 points", "--max-points 72"]),
    ([*GRID, "--set", "data.val_fraction=0"], ["data.val_fraction is 0", "validation"]),
    # The config's temperature is hinton's; null leaves it out for logit_mse, which has none.
    (["--set", "distill.method=logit_mse", "--set", "distill.temperature=null"], ["'logit_mse'", "--grid"]),
    (["--grid", "distill.alpha=0.5,0.5"], ["same value twice"]),
    (["--grid", "distill.alpha=0.5,0.9", "--grid", "distill={alpha: 0.1}"], ["distill and distill.alpha overlap"]),
], ids=["unknown-key", "empty-values", "no-equals", "wrong-type", "too-many-points", "no-val-split",
        "no-default-grid", "repeated-value", "overlapping-keys"])
def test_bad_input_is_one_line_and_trains_nothing(extra, fragments, teacher, tmp_path):
    args = ["tune", DISTILL, *extra, "--output-dir", tmp_path / "tune", "--set", f"distill.teacher={teacher}"]
    assert_user_error(invoke(*args), *fragments)
    assert not (tmp_path / "tune").exists()


def test_a_config_without_distillation_is_refused(tmp_path):
    assert_user_error(invoke("tune", CONFIGS / "digits_scratch.yaml", "--output-dir", tmp_path / "tune"),
                      "no distill: section")


def test_another_tune_or_foreign_files_are_refused(tuned, teacher, tmp_path):
    output_dir, _ = tuned
    before = snapshot(output_dir)
    other = ["tune", DISTILL, "--grid", "distill.alpha=0.5", "--output-dir", output_dir,
             "--set", f"distill.teacher={teacher}"]
    assert_user_error(invoke(*other), "holds another tune", "--overwrite")
    assert snapshot(output_dir) == before
    write_yaml(tmp_path / "notes.yaml", {"mine": True})
    assert_user_error(invoke(*tune_args(teacher, tmp_path)), "holds no tune", "--output-dir")
    assert yaml.safe_load((tmp_path / "notes.yaml").read_text()) == {"mine": True}
