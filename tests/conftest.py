import shutil
from pathlib import Path

import pytest
from cli_helpers import TEACHER_EPOCHS, assert_ok, invoke, run_config, snapshot, write_npz_dataset, write_yaml
from language_models import save_pretrained_model, train_tokenizer

from distillery.data.tokenizer import load_tokenizer

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    # `make test` installs the data; a missing package is a set-up failure to see, not a skip.
    if not FASHION_DIR.is_dir():
        pytest.fail(f"{FASHION_DIR} is missing: run `make data` (installs Debian's dataset-fashion-mnist)")
    return FASHION_DIR


# ---------------------------------------------------------------- CLI runs shared by the CLI tests (trained once)


@pytest.fixture(scope="session")
def cli_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="session")
def teacher_run(cli_workspace) -> Path:
    """A digits 'teacher' trained through `distillery train` (2 epochs, from the YAML, no override)."""
    output_dir = cli_workspace / "teacher"
    config = write_yaml(cli_workspace / "teacher.yaml",
                        run_config(output_dir, train={"epochs": TEACHER_EPOCHS, "batch_size": 128, "lr": 0.01}))
    result = invoke("train", config)
    assert_ok(result)
    return output_dir


@pytest.fixture(scope="session")
def distillation(cli_workspace, teacher_run) -> tuple[Path, dict, dict]:
    """A digits student distilled from `teacher_run` (Hinton), with the teacher's snapshots before and after."""
    output_dir = cli_workspace / "student"
    config = write_yaml(cli_workspace / "student.yaml", run_config(
        output_dir, model={"name": "mlp", "hidden": [8]},
        distill={"teacher": str(teacher_run), "method": "hinton", "temperature": 4.0, "alpha": 0.5}))
    teacher_before = snapshot(teacher_run)
    result = invoke("distill", config)
    assert_ok(result)
    assert str(output_dir) in result.stdout and "test accuracy" in result.stdout
    return output_dir, teacher_before, snapshot(teacher_run)


@pytest.fixture(scope="session")
def student_run(distillation) -> Path:
    return distillation[0]


@pytest.fixture(scope="session")
def npz_teacher_run(cli_workspace) -> Path:
    """A teacher trained on a 3-class .npz dataset with digit-shaped (1x8x8) inputs."""
    data_dir = write_npz_dataset(cli_workspace / "three-classes")
    output_dir = cli_workspace / "npz-teacher"
    config = write_yaml(cli_workspace / "npz-teacher.yaml",
                        run_config(output_dir, data={"dataset": "npz", "path": str(data_dir)}))
    assert_ok(invoke("train", config))
    return output_dir


@pytest.fixture
def existing_run(tmp_path, teacher_run) -> tuple[Path, dict]:
    """A private copy of a finished run and its snapshot: bad commands aimed at it must leave it byte-identical."""
    copy = tmp_path / "existing"
    shutil.copytree(teacher_run, copy)
    return copy, snapshot(copy)


@pytest.fixture(scope="session", autouse=True)
def teacher_cache_dir(tmp_path_factory):
    """The automatic teacher-output cache goes to a temporary directory, never the user's ~/.cache."""
    import os

    directory = tmp_path_factory.mktemp("teacher-cache")
    previous = os.environ.get("DISTILLERY_CACHE")
    os.environ["DISTILLERY_CACHE"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["DISTILLERY_CACHE"]
    else:
        os.environ["DISTILLERY_CACHE"] = previous


# ---------------------------------------------------------------- tiny language models (per test module)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def pretrained_teacher(tmp_path_factory, tokenizer_dir) -> Path:
    """A user's pretrained model folder: a 3-block Llama-style model with its tokenizer beside it."""
    folder = save_pretrained_model(tmp_path_factory.mktemp("teacher"), "llama", layers=3, width=48)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder)
    return folder
