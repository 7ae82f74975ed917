"""The training loop, schedules, checkpoints and run directories."""
import json

import pytest
import torch
from torch import nn

from distillery.engine import RunDirectory, Trainer, build_optimizer, build_scheduler
from distillery.errors import CheckpointError, ConfigError, DataError, RunExistsError
from distillery.methods import Supervised
from distillery.models import build_model
from distillery.models.checkpoint import load_model
from distillery.models.checkpoint_files import load_checkpoint_files, save_checkpoint


def separable_batches(count=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        inputs = torch.randn(32, 4, generator=generator)
        batches.append((inputs, (inputs[:, 0] > 0).long()))
    return batches


def test_trainer_learns_and_keeps_the_best_weights():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    method = Supervised(model)
    optimizer = build_optimizer(method.trainable_parameters(), "adamw", lr=0.05, weight_decay=0.0)
    val = separable_batches(seed=1)
    with torch.no_grad():
        untrained = sum(int((model(inputs).argmax(1) == labels).sum()) for inputs, labels in val) / (8 * 32)
    result = Trainer(method, optimizer, epochs=5, progress=False).fit(separable_batches(), val)
    accuracies = [record["val/accuracy"] for record in result.history]
    assert untrained < 0.8 and accuracies[-1] > 0.9  # it learned: from near chance to nearly every sample
    assert result.best_metrics["val/accuracy"] == max(accuracies)
    assert result.history[0]["train/loss"] > result.history[-1]["train/loss"]
    assert {"epoch", "lr", "train/loss", "train/ce", "epoch_time_s", "val/accuracy", "val/loss"} <= set(result.history[0])


def test_empty_training_data_is_a_clear_error():
    method = Supervised(nn.Linear(4, 2))
    optimizer = build_optimizer(method.trainable_parameters(), "sgd", lr=0.1, weight_decay=0.0)
    with pytest.raises(DataError, match="no batches"):
        Trainer(method, optimizer, epochs=1, progress=False).fit([])


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_schedules_run_their_course(name):
    optimizer = build_optimizer(nn.Linear(2, 2).parameters(), "adamw", lr=0.1, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, name, total_steps=10)
    rates = []
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    if name == "constant":
        assert rates == [0.1] * 10
    else:
        assert rates[-1] < 0.01 and max(rates) <= 0.1 + 1e-9


def test_unknown_optimizer_and_schedule():
    with pytest.raises(ConfigError, match="adamw"):
        build_optimizer(nn.Linear(2, 2).parameters(), "adam9", lr=0.1, weight_decay=0.0)
    optimizer = build_optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match="cosine"):
        build_scheduler(optimizer, "linear-ish", total_steps=3)


def save_tiny(tmp_path, spec=None):
    spec = spec or {"name": "mlp", "hidden": [5]}
    model = build_model(spec, (4,), 3)
    metadata = {"architecture": spec, "input_shape": [4], "num_classes": 3}
    save_checkpoint(tmp_path / "model", model, metadata)
    return model


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = save_tiny(tmp_path)
    loaded, metadata = load_model(tmp_path)
    inputs = torch.randn(3, 4)
    assert torch.equal(model.eval()(inputs), loaded.eval()(inputs))
    assert metadata["format"] == "distillery-checkpoint"
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupted_weights_are_refused_naming_the_file(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_tiny(tmp_path)
    document = json.loads((tmp_path / "model.json").read_text())
    document["architecture"] = {"name": "mlp", "hidden": [7]}
    (tmp_path / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path)


def test_missing_checkpoint_and_missing_metadata(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_files(tmp_path / "nothing")
    save_tiny(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="not a finished distillery checkpoint"):
        load_checkpoint_files(tmp_path / "model.safetensors")


def test_run_directory_refuses_a_finished_run_unless_told(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start("a: 1\n")
    save_checkpoint(tmp_path / "run" / "model", nn.Linear(2, 2), {})
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match="--overwrite"):
        RunDirectory(tmp_path / "run").start("a: 2\n")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert (tmp_path / "run" / "config.yaml").read_text() == "a: 1\n"
    RunDirectory(tmp_path / "run", overwrite=True).start("a: 2\n")
    assert not (tmp_path / "run" / "model.safetensors").exists()
