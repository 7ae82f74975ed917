"""A teacher trained outside distillery: the user's own PyTorch module (a factory in their file) and its weights,
with the preprocessing it was trained on, named in the config's distill.teacher."""
import datetime
import json
import textwrap

import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, snapshot, write_yaml
from safetensors.torch import save_file

from distillery.data import Normalizer, load_dataset
from distillery.errors import ModelError
from distillery.teachers.user_teacher import read_weights

MODULE = """
from torch import nn


def make_teacher(width=64, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))
"""


@pytest.fixture(scope="module")
def own_teacher(tmp_path_factory):
    """A teacher trained in plain PyTorch on digits in its own preprocessing, saved as a user would save it."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_models_a.py").write_text(textwrap.dedent(MODULE))
    train, test = load_dataset("digits")
    normalizer = Normalizer.fit(train)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs = normalizer(train.inputs)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), train.labels).backward()
        optimizer.step()
    torch.save(model.state_dict(), folder / "teacher.pt")
    own_accuracy = (model(normalizer(test.inputs)).argmax(1) == test.labels).float().mean().item()
    raw_accuracy = (model(test.inputs).argmax(1) == test.labels).float().mean().item()
    return folder, normalizer, own_accuracy, raw_accuracy


def spec(folder, normalizer, **changes):
    return {"factory": "user_models_a:make_teacher", "options": {"width": 32}, "weights": str(folder / "teacher.pt"),
            "preprocessing": normalizer.to_dict(), **changes}


def test_a_users_teacher_is_built_loaded_checked_and_fed_its_own_inputs(own_teacher, tmp_path, monkeypatch):
    folder, normalizer, own_accuracy, raw_accuracy = own_teacher
    assert own_accuracy > raw_accuracy + 0.05  # fed the wrong inputs, the teacher is visibly worse
    monkeypatch.chdir(folder)  # the factory's module is in the folder the command runs from
    config = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path / "student", data={"dataset": "digits", "val_fraction": 0.1, "normalize": True},
        model={"name": "mlp", "hidden": [32]}, train={"epochs": 15, "lr": 0.01, "batch_size": 64}, progress=False,
        distill={"teacher": spec(folder, normalizer)}))
    result = invoke("distill", str(config))
    assert_ok(result)
    # The teacher's accuracy as distillery feeds it equals its accuracy in its own pipeline; it is printed without
    # progress bars and whatever standard error is (here a test runner's buffer, not a terminal).
    assert f"teacher user_models_a:make_teacher: {own_accuracy:.2%} test accuracy" in result.stderr
    evaluation = json.loads((tmp_path / "student" / "evaluation.json").read_text())
    assert evaluation["agreement"] > 0.85
    quiet = invoke("distill", str(config), "--quiet", "--overwrite", "--set", "train.epochs=1")
    assert_ok(quiet)
    assert "test accuracy on this data" not in quiet.stderr  # --quiet silences notes and checks


def test_weights_that_do_not_fit_the_factory_are_named(own_teacher, tmp_path, monkeypatch):
    folder, normalizer, _, _ = own_teacher
    monkeypatch.chdir(folder)
    teacher = spec(folder, normalizer, options={"width": 48})
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "student", distill={"teacher": teacher}))
    before = snapshot(tmp_path)
    assert_user_error(invoke("distill", str(config)), "does not fit the model user_models_a:make_teacher",
                      "other shape: 1.weight")
    assert snapshot(tmp_path) == before and not (tmp_path / "student").exists()


@pytest.mark.parametrize("teacher, fragment", [
    ({"factory": "user_models_a:make_teacher"}, "factory and weights go together"),
    ({"factory": "user_models_a:make_teacher", "weights": "w.pt", "onnx": "t.onnx"}, "exactly one of"),
    ({"factory": "no_module_here:make", "weights": "teacher.pt"}, "cannot import 'no_module_here'"),
    ({"factory": "user_models_a:make_teacher", "weights": "missing.pt"}, "missing.pt do not exist"),
    ({"factory": "user_models_a:make_teacher", "weights": "teacher.pt", "preprocessing": {"mean": [0.5]}},
     "preprocessing gives mean and std"),
])
def test_a_wrong_teacher_spec_is_one_line(own_teacher, tmp_path, monkeypatch, teacher, fragment):
    folder, _, _, _ = own_teacher
    monkeypatch.chdir(folder)
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "student", distill={"teacher": teacher}))
    assert_user_error(invoke("distill", str(config)), fragment)


def test_weights_are_read_without_unpickling_anything_but_tensors(tmp_path):
    state = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    assert torch.equal(read_weights(tmp_path / "w.safetensors")["weight"], state["weight"])
    assert set(read_weights(tmp_path / "wrapped.pt")) == {"weight", "bias"}

    # Any object beyond tensors and plain containers needs full unpickling, which could run code: refused.
    torch.save({"weight": torch.ones(1), "saved_on": datetime.date(2026, 1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="holds more than tensors"):
        read_weights(tmp_path / "pickled.pt")
    (tmp_path / "weights.txt").write_text("0")
    with pytest.raises(ModelError, match="use .safetensors or a torch.save-d state dict"):
        read_weights(tmp_path / "weights.txt")


def test_an_onnx_teacher_is_fed_its_own_inputs_and_distilled_from(own_teacher, tmp_path):
    from distillery.compress.quiet import quiet

    folder, normalizer, own_accuracy, _ = own_teacher
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model.load_state_dict(torch.load(folder / "teacher.pt", weights_only=True))
    with quiet():
        program = torch.onnx.export(model.eval(), (torch.zeros(2, 1, 8, 8),), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
        program.save(str(tmp_path / "teacher.onnx"), external_data=False)
    teacher = {"onnx": str(tmp_path / "teacher.onnx"), "preprocessing": normalizer.to_dict()}
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "student", progress=True,
                                                          train={"epochs": 15, "lr": 0.01, "batch_size": 64},
                                                          distill={"teacher": teacher}))
    result = invoke("distill", str(config))
    assert_ok(result)
    assert f"teacher {tmp_path / 'teacher.onnx'}: {own_accuracy:.2%} test accuracy" in result.stderr
    assert json.loads((tmp_path / "student" / "evaluation.json").read_text())["agreement"] > 0.85


def test_outputs_computed_elsewhere_teach_by_row_and_a_wrong_file_is_one_line(tmp_path):
    import numpy as np

    train, _ = load_dataset("digits")
    # "Served elsewhere": confident, correct probabilities for every training row of the source, in its order.
    probabilities = np.full((len(train), 10), 0.02, np.float32)
    probabilities[np.arange(len(train)), train.labels.numpy()] = 0.82
    np.save(tmp_path / "served.npy", probabilities)
    config = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path / "student", progress=True, train={"epochs": 10, "lr": 0.01, "batch_size": 64},
        distill={"teacher": {"outputs": str(tmp_path / "served.npy")}, "alpha": 0.0}))
    result = invoke("distill", str(config))
    assert_ok(result)
    assert "teacher outputs read from" in result.stderr
    evaluation = json.loads((tmp_path / "student" / "evaluation.json").read_text())
    assert evaluation["accuracy"] > 0.8 and "agreement" not in evaluation  # no test outputs to agree with
    np.save(tmp_path / "short.npy", probabilities[:-5])
    short = write_yaml(tmp_path / "short.yaml", run_config(
        tmp_path / "short-run", distill={"teacher": {"outputs": str(tmp_path / "short.npy")}}))
    assert_user_error(invoke("distill", str(short)), "aligned by row")
    augmented = write_yaml(tmp_path / "augmented.yaml", run_config(
        tmp_path / "augmented-run", data={"augment": {"shift": 1}},
        distill={"teacher": {"outputs": str(tmp_path / "served.npy")}}))
    assert_user_error(invoke("distill", str(augmented)), "turn data.augment off")
