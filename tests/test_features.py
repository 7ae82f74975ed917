"""Feature distillation: hook capture, feature losses, FitNets hints and attention transfer."""
import numpy as np
import pytest
import torch
from torch import nn

from distillery.data import Batch
from distillery.errors import ConfigError, ModelError
from distillery.losses import attention_map, attention_transfer, hint_mse
from distillery.methods import AttentionTransfer, FeatureHints, create_method
from distillery.models import build_model
from distillery.models.hooks import capture_features, module_paths, resolve_module

SHAPE = (1, 8, 8)


def cnn(channels, seed=0):
    torch.manual_seed(seed)
    return build_model({"name": "cnn", "channels": channels}, SHAPE, 3)


def images(count=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, *SHAPE, generator=generator), torch.randint(0, 3, (count,), generator=generator)


def test_hooks_capture_outputs_and_are_removed_even_after_an_exception():
    model = cnn([8, 16])
    stage = model.features[1]
    inputs, _ = images(4)
    with capture_features({"stage": stage}) as features:
        model(inputs)
    assert torch.equal(features["stage"], stage(model.features[0](inputs)))
    assert len(stage._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with capture_features({"stage": stage}):
            assert len(stage._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(stage._forward_hooks) == 0


def test_wrong_path_fails_at_build_time_listing_valid_paths():
    teacher, student = cnn([16, 32]), cnn([8])
    assert "features.1" in module_paths(teacher) and "" not in module_paths(teacher)
    with pytest.raises(ModelError, match=r"teacher has no module 'feature.1' \(did you mean 'features.1'\?\); "
                                         r"valid paths: features, features.0"):
        FeatureHints(student, teacher, student_layer="features.0", teacher_layer="feature.1", input_shape=SHAPE)
    with pytest.raises(ModelError, match="valid paths: .*classifier"):
        resolve_module(student, "layer3", "student")


def test_attention_map_matches_numpy():
    features = torch.randn(3, 5, 4, 2)
    array = features.numpy().astype(np.float64)
    expected = (np.abs(array) ** 3).mean(axis=1).reshape(3, -1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(attention_map(features, p=3).numpy(), expected, rtol=1e-5)


def test_attention_transfer_is_zero_for_identical_features_and_scale_invariant():
    student, teacher = torch.randn(4, 8, 4, 4), torch.randn(4, 32, 4, 4)
    assert attention_transfer(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)
    loss = attention_transfer(student, teacher)
    assert loss.item() > 0
    assert attention_transfer(7.5 * student, 0.1 * teacher).item() == pytest.approx(loss.item(), rel=1e-4)
    # Spatial mismatch: the larger map is pooled to the smaller one first.
    larger = torch.randn(4, 8, 8, 8)
    pooled = nn.functional.adaptive_avg_pool2d(larger, 4)
    assert attention_transfer(larger, teacher).item() == pytest.approx(attention_transfer(pooled, teacher).item())


def test_hint_mse_is_the_elementwise_mean():
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert hint_mse(student, teacher).item() == pytest.approx(((student - teacher) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="adapt"):
        hint_mse(student, teacher[:, :2])


def test_fitnet_adapter_trains_but_stays_out_of_the_student_checkpoint():
    teacher, student = cnn([16, 32], seed=1), cnn([8], seed=2)
    batch_norm = student.features[0][1]
    running_mean, batches = batch_norm.running_mean.clone(), batch_norm.num_batches_tracked.clone()
    teacher.train()
    student.train()
    method = create_method("fitnet", student, teacher, student_layer="features.0", teacher_layer="features.0",
                           input_shape=SHAPE)
    assert isinstance(method.adapter, nn.Conv2d) and method.adapter.kernel_size == (1, 1)
    assert (method.adapter.in_channels, method.adapter.out_channels) == (8, 16)
    assert torch.equal(batch_norm.running_mean, running_mean) and torch.equal(batch_norm.num_batches_tracked, batches)
    assert student.training and all(module.training for module in student.modules())  # modes restored
    assert method.precomputed_teacher_features is None  # the live teacher, unless given cached outputs
    trainable = {id(p) for p in method.trainable_parameters()}
    assert {id(p) for p in method.adapter.parameters()} <= trainable
    assert trainable == {id(p) for p in student.parameters()} | {id(p) for p in method.adapter.parameters()}
    student_tensors = {id(t) for t in method.student.state_dict(keep_vars=True).values()}
    assert not {id(p) for p in method.adapter.parameters()} & student_tensors
    assert not any(key.startswith("adapter") for key in method.student.state_dict())
    method.train()
    inputs, labels = images()
    output = method.step(Batch(inputs, labels))
    output.loss.backward()
    assert set(output.logs) == {"ce", "hint"}
    expected = output.logs["ce"] + 100.0 * output.logs["hint"]
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training and all(not module.training for module in teacher.modules())
    assert method.adapter.weight.grad is not None and student.features[0][0].weight.grad is not None
    assert len(method._student_modules[0]._forward_hooks) == 0


def test_fitnet_handles_spatial_mismatch_and_rejects_mixed_layers():
    teacher, student = cnn([16, 32]), cnn([8])
    # teacher features.1 is [32, 2, 2]; student features.0 is [8, 4, 4] and gets pooled to 2x2.
    method = FeatureHints(student, teacher, student_layer="features.0", teacher_layer="features.1",
                          input_shape=SHAPE, kd_weight=0.5)
    inputs, labels = images()
    output = method.step(Batch(inputs, labels))
    assert set(output.logs) == {"ce", "hint", "kd"} and torch.isfinite(output.loss)
    with pytest.raises(ModelError, match="both be convolutional"):
        FeatureHints(student, teacher, student_layer="features.0", teacher_layer="head", input_shape=SHAPE)
    with pytest.raises(ConfigError, match="input_shape"):
        FeatureHints(student, teacher, student_layer="features.0", teacher_layer="features.1")


def test_attention_transfer_validates_layers():
    teacher, student = cnn([16, 32]), cnn([8])
    with pytest.raises(ConfigError, match="same length"):
        AttentionTransfer(student, teacher, student_layers=["features.0"], teacher_layers=["features.0", "features.1"])
    with pytest.raises(ModelError, match="convolutional"):
        AttentionTransfer(student, teacher, student_layers=["head"], teacher_layers=["features.1"], input_shape=SHAPE)
    method = AttentionTransfer(student, teacher, student_layers=["features.0"], teacher_layers=["features.1"],
                               input_shape=SHAPE)
    assert method.precomputed_teacher_features is None
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in student.parameters()}


def train_feature_loss(method, log, steps=60, lr=0.01):
    inputs, labels = images(32, seed=3)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=lr)
    method.train()
    losses = []
    for _ in range(steps):
        output = method.step(Batch(inputs, labels))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.logs[log].item())
    return losses


def test_fitnet_hints_alone_reduce_the_hint_loss():
    method = FeatureHints(cnn([8], seed=4), cnn([16, 32], seed=5), student_layer="features.0",
                          teacher_layer="features.1", input_shape=SHAPE, alpha=0.0)
    losses = train_feature_loss(method, "hint")
    assert losses[-1] < 0.5 * losses[0]


def test_attention_transfer_alone_reduces_the_attention_loss():
    method = AttentionTransfer(cnn([8], seed=4), cnn([16, 32], seed=5), student_layers=["features.0"],
                               teacher_layers=["features.1"], input_shape=SHAPE, alpha=0.0)
    losses = train_feature_loss(method, "at")
    assert losses[-1] < 0.5 * losses[0]


def test_a_wrong_layer_path_stops_a_run_before_it_starts(tmp_path):
    from distillery.app.config.files import build_config
    from distillery.app.workflows.run import run

    common = {"data": {"dataset": "digits", "val_fraction": 0.15}, "progress": False, "measure_latency": False}
    teacher = run(build_config({**common, "output_dir": str(tmp_path / "teacher"), "role": "teacher",
                                "model": {"name": "cnn", "channels": [8, 16]}, "train": {"epochs": 1}}))
    config = build_config({**common, "output_dir": str(tmp_path / "student"), "model": {"name": "cnn", "channels": [8]},
                           "distill": {"teacher": str(teacher), "method": "fitnet", "student_layer": "features.0",
                                       "teacher_layer": "features.7"}})
    with pytest.raises(ModelError, match=r"teacher has no module 'features.7'.*features.1"):
        run(config)
    assert not (tmp_path / "student").exists()
