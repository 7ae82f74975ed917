"""Every example in configs/ is valid, and the digits examples run end to end (on a shortened budget)."""
import json
from pathlib import Path

import pytest

from distillery.config import load_config
from distillery.runs import run

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
DIGITS_STUDENTS = [path for path in CONFIGS if path.name.startswith("digits_") and path.name != "digits_teacher.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_example_config_is_valid(path):
    config = load_config(path)
    assert config.output_dir.startswith("runs/")


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    short = ["train.epochs=3", "progress=false", "measure_latency=false"]
    return run(load_config(CONFIGS[0].parent / "digits_teacher.yaml", [f"output_dir={out / 'teacher'}", *short]))


@pytest.mark.parametrize("path", DIGITS_STUDENTS, ids=lambda path: path.name)
def test_digits_example_runs(path, digits_teacher, tmp_path):
    overrides = [f"output_dir={tmp_path / 'run'}", "train.epochs=10", "progress=false", "measure_latency=false"]
    config = load_config(path, overrides)
    if config.distill is not None and config.distill.teacher is not None:
        teachers = config.distill.teacher
        named = f"[{', '.join([str(digits_teacher)] * len(teachers))}]" if isinstance(teachers, list) else digits_teacher
        config = load_config(path, [*overrides, f"distill.teacher={named}"])
    evaluation = json.loads((run(config) / "evaluation.json").read_text())
    assert evaluation["accuracy"] > 0.3  # ten short epochs: well above the 10% of chance
