"""Every example in configs/ is valid, and the digits examples run end to end (on a shortened budget)."""
import json
from pathlib import Path

import pytest

from distillery.app.config.files import load_config
from distillery.app.workflows.run import run

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
DIGITS_STUDENTS = [path for path in CONFIGS if path.name.startswith("digits_") and path.name != "digits_teacher.yaml"]
SHORT = ["train.epochs=3", "progress=false", "measure_latency=false"]
# Teachers of a class subset cannot stand in for each other: a config naming one gets that example trained here.
SUBSET_TEACHERS = {load_config(path).output_dir: path for path in DIGITS_STUDENTS if load_config(path).data.classes}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_example_config_is_valid(path):
    config = load_config(path)
    assert config.output_dir.startswith("runs/")


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return run(load_config(CONFIGS[0].parent / "digits_teacher.yaml", [f"output_dir={out / 'teacher'}", *SHORT]))


@pytest.fixture(scope="module")
def subset_teachers(tmp_path_factory):
    """output_dir of a subset-teacher example -> that example trained (short), each once, when first asked for."""
    out, trained = tmp_path_factory.mktemp("subset-teachers"), {}

    def trained_teacher(output_dir: str) -> Path:
        if output_dir not in trained:
            overrides = [f"output_dir={out / Path(output_dir).name}", *SHORT]
            trained[output_dir] = run(load_config(SUBSET_TEACHERS[output_dir], overrides))
        return trained[output_dir]
    return trained_teacher


def substitute(teacher, digits_teacher, subset_teachers) -> str:
    """The --set value for distill.teacher: subset teachers trained here, the shared digits teacher for any other."""
    paths = teacher if isinstance(teacher, list) else [teacher]
    named = [str(subset_teachers(p) if p in SUBSET_TEACHERS else digits_teacher) for p in paths]
    return f"[{', '.join(named)}]" if isinstance(teacher, list) else named[0]


@pytest.mark.parametrize("path", DIGITS_STUDENTS, ids=lambda path: path.name)
def test_digits_example_runs(path, digits_teacher, subset_teachers, tmp_path):
    overrides = [f"output_dir={tmp_path / 'run'}", "train.epochs=10", "progress=false", "measure_latency=false"]
    config = load_config(path, overrides)
    if config.distill is not None and config.distill.teacher:
        named = substitute(config.distill.teacher, digits_teacher, subset_teachers)
        config = load_config(path, [*overrides, f"distill.teacher={named}"])
    evaluation = json.loads((run(config) / "evaluation.json").read_text())
    assert evaluation["accuracy"] > 0.3  # ten short epochs: well above the 10% of chance
