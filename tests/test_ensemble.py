"""Ensemble teachers and students initialised from a teacher's weights."""
import json

import pytest
import torch
from torch import nn

from distillery.app.config.files import build_config
from distillery.app.steps.method import build_method
from distillery.app.workflows.run import run
from distillery.app.steps.load_teachers import teachers_and_data
from distillery.errors import ConfigError, ModelError
from distillery.models import build_model
from distillery.teachers.ensemble import EnsembleTeacher

COMMON = {"data": {"dataset": "digits", "val_fraction": 0.15}, "progress": False, "measure_latency": False}
BUDGET = {"epochs": 10, "lr": 0.003, "batch_size": 64}


def fixed(logits):
    layer = nn.Linear(1, len(logits), bias=True)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(logits))
    return layer


def test_probability_ensemble_softens_to_the_weighted_mean_of_tempered_probabilities():
    first, second, temperature = [2.0, 0.0, -1.0], [0.0, 3.0, 0.5], 4.0
    ensemble = EnsembleTeacher([fixed(first), fixed(second)], weights=[3, 1], temperature=temperature)
    softened = torch.softmax(ensemble(torch.zeros(2, 1)) / temperature, dim=-1)
    expected = 0.75 * torch.softmax(torch.tensor(first) / temperature, -1) + 0.25 * torch.softmax(
        torch.tensor(second) / temperature, -1)
    assert torch.allclose(softened, expected.expand(2, 3), atol=1e-6)


def test_logit_ensemble_is_the_weighted_mean_of_logits():
    ensemble = EnsembleTeacher([fixed([2.0, 0.0]), fixed([0.0, 4.0])], weights=[1, 3], combine="logits")
    assert torch.allclose(ensemble(torch.zeros(1, 1)), torch.tensor([[0.5, 3.0]]))


def test_bad_ensembles():
    with pytest.raises(ConfigError, match="one non-negative weight per teacher"):
        EnsembleTeacher([fixed([0.0, 1.0])], weights=[1, 2])
    with pytest.raises(ConfigError, match="probabilities, logits"):
        EnsembleTeacher([fixed([0.0, 1.0])], combine="median")
    with pytest.raises(ModelError, match="same classes"):
        EnsembleTeacher([fixed([0.0, 1.0]), fixed([0.0, 1.0, 2.0])])(torch.zeros(1, 1))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers")
    specs = {"mlp": {"name": "mlp", "hidden": [64]}, "cnn": {"name": "cnn", "channels": [16, 32]}}
    return {name: run(build_config({**COMMON, "output_dir": str(out / name), "role": "teacher", "model": spec,
                                    "train": BUDGET}))
            for name, spec in specs.items()}


def test_student_distils_from_an_ensemble_of_two_architectures(teachers, tmp_path):
    config = build_config({**COMMON, "output_dir": str(tmp_path / "student"), "model": {"name": "mlp", "hidden": [32]},
                           "train": BUDGET, "distill": {"teacher": [str(teachers["mlp"]), str(teachers["cnn"])],
                                                        "teacher_weights": [1, 2], "temperature": 4.0}})
    evaluation = json.loads((run(config) / "evaluation.json").read_text())
    assert evaluation["accuracy"] > 0.85 and evaluation["agreement"] > 0.85


def test_student_initialised_from_its_teacher_starts_where_the_teacher_is(teachers, tmp_path):
    config = build_config({**COMMON, "output_dir": str(tmp_path / "copy"), "model": {"name": "mlp", "hidden": [64]},
                           "train": {**BUDGET, "epochs": 1, "lr": 1e-6},
                           "distill": {"teacher": str(teachers["mlp"]), "init_from_teacher": True}})
    student_dir = run(config)
    teacher_accuracy = json.loads((teachers["mlp"] / "evaluation.json").read_text())["accuracy"]
    evaluation = json.loads((student_dir / "evaluation.json").read_text())
    assert evaluation["agreement"] > 0.99 and abs(evaluation["accuracy"] - teacher_accuracy) < 0.01
    assert json.loads((student_dir / "model.json").read_text())["initialized_from_teacher"].startswith(
        "copied 4 of 4 student tensors")


def test_a_bad_layer_map_fails_before_the_run_starts(teachers, tmp_path):
    config = build_config({**COMMON, "output_dir": str(tmp_path / "bad"), "model": {"name": "mlp", "hidden": [64]},
                           "train": BUDGET, "distill": {"teacher": str(teachers["mlp"]), "init_from_teacher": True,
                                                        "init_layer_map": {"features.9": "features.0"}}})
    with pytest.raises(ModelError, match="features.9"):
        run(config)
    assert not (tmp_path / "bad").exists()


def test_ensemble_teachers_of_different_preprocessing_are_each_fed_their_own(teachers, tmp_path):
    other = run(build_config({**COMMON, "output_dir": str(tmp_path / "raw"), "role": "teacher",
                              "data": {**COMMON["data"], "normalize": False},
                              "model": {"name": "mlp", "hidden": [8]}, "train": {**BUDGET, "epochs": 1}}))
    config = build_config({**COMMON, "output_dir": str(tmp_path / "s"), "model": {"name": "mlp", "hidden": [8]},
                           "train": {**BUDGET, "epochs": 1}, "distill": {"teacher": [str(teachers["mlp"]), str(other)]}})
    # What each member sees is compared with its own pipeline in tests/test_trust.py; here the run goes through.
    assert (run(config) / "model.json").is_file()


def hinted_config(tmp_path, teachers, **distill):
    return build_config({**COMMON, "output_dir": str(tmp_path / "hinted"), "model": {"name": "cnn", "channels": [8, 16]},
                         "train": {**BUDGET, "epochs": 1},
                         "distill": {"teacher": [str(teachers["mlp"]), str(teachers["cnn"])], "method": "fitnet",
                                     "student_layer": "features.1", "teacher_layer": "features.1", **distill}})


def test_feature_hints_come_from_the_chosen_ensemble_teacher(teachers, tmp_path):
    config = hinted_config(tmp_path, teachers, hint_teacher=1, kd_weight=1.0)
    _, _, ensemble = teachers_and_data(config)
    method = build_method(config, build_model(config.model, (1, 8, 8), 10), ensemble, (1, 8, 8), 10)
    assert method._teacher_modules[0] is ensemble.members[1].features[1]   # the cnn's, not the mlp's
    assert method.teacher is ensemble                                      # soft targets: the whole ensemble
    assert json.loads((run(config) / "evaluation.json").read_text())["samples"] == 360


@pytest.mark.parametrize("distill, error, fragment", [
    ({"hint_teacher": 2}, ConfigError, "there are 2 teachers"),
    ({"hint_teacher": 0, "teacher_layer": "features.0"}, ModelError, "both be convolutional"),  # the mlp's
    ({"hint_teacher": 0}, ModelError, "no module 'members.0.features.1'"),
    ({"hint_teacher": 1, "method": "hinton", "student_layer": None, "teacher_layer": None}, ConfigError,
     "uses none"),
])
def test_bad_hint_teacher_choices_stop_the_run_before_it_starts(teachers, tmp_path, distill, error, fragment):
    with pytest.raises(error, match=fragment):
        run(hinted_config(tmp_path, teachers, **distill))
    assert not (tmp_path / "hinted").exists()
