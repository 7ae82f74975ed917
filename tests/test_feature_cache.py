"""Cached teacher features: the step they give, the teacher never called, per-layer files, budget, runs, CLI."""
import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, write_yaml

from distillery.app.config.files import build_config
from distillery.app.steps.fit import fit_method
from distillery.app.workflows.run import run
from distillery.app.steps.transfer_batches import plan_transfer
from distillery.data import ArrayDataset, Augmentation, Batch, BatchIterator
from distillery.errors import CheckpointError
from distillery.losses import hard_label_cross_entropy, hint_mse, pool_to_common_size, soft_target_kl
from distillery.methods import create_method
from distillery.models import build_model
from distillery.teachers.feature_cache import FeatureTable, cached_teacher_outputs
from distillery.teachers.precomputed import precompute_outputs

SHAPE = (1, 8, 8)


def cnn(channels, seed=0):
    torch.manual_seed(seed)
    return build_model({"name": "cnn", "channels": channels}, SHAPE, 3)


def teacher_cnn():
    return cnn([16, 32], seed=1).eval()  # as a method freezes it: batch norm on running statistics


def images(count=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(count, *SHAPE, generator=generator), torch.arange(count) % 3, ["a", "b", "c"])


def plan(data, teacher, tmp_path, layers, **options):
    settings = {"augmentation": Augmentation(), "transform": None, "batch_size": 16, "seed": 0, "label_options": {},
                "teacher_table": True, "cache_dir": tmp_path, "teacher_layers": layers, **options}
    return plan_transfer(data, teacher, **settings)


class CallCounter:
    """Counts a module's forward calls; ``forbid()`` makes the next one raise."""

    def __init__(self, module):
        self.calls, self.forbidden = 0, False
        module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.forbidden:
            raise AssertionError("the teacher ran although its outputs are cached")
        self.calls += 1

    def forbid(self):
        self.forbidden = True


# ---------------------------------------------------------------- the step and the teacher


def test_cached_fitnet_step_equals_the_loss_on_the_live_teachers_outputs_rounded_to_float16(tmp_path):
    data, teacher = images(), teacher_cnn()
    method = create_method("fitnet", cnn([8], seed=2), teacher, student_layer="features.0",
                           teacher_layer="features.1", input_shape=SHAPE, kd_weight=0.5, temperature=3.0)
    plan(data, teacher, tmp_path, ["features.1"]).apply_to(method)
    inputs, labels, indices = data.inputs[[5, 0, 31]], data.labels[[5, 0, 31]], torch.tensor([5, 0, 31])
    # By hand, from the live teacher: its hooked output and logits rounded to float16 as the cache stores them.
    with torch.no_grad():
        teacher_features = teacher.features[1](teacher.features[0](inputs)).half().float()
        teacher_logits = teacher(inputs).half().float()
    student_features = method.student.features[0](inputs)
    student_logits = method.student(inputs)
    hint = hint_mse(method.adapter(pool_to_common_size(student_features, teacher_features)[0]), teacher_features)
    expected = (hard_label_cross_entropy(student_logits, labels) + 100.0 * hint
                + 0.5 * soft_target_kl(student_logits, teacher_logits, 3.0))
    output = method.step(Batch(inputs, labels, indices=indices))
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.logs["hint"].item() == pytest.approx(hint.item(), rel=1e-5)


@pytest.mark.parametrize("method_name, options", [
    ("fitnet", {"student_layer": "features.0", "teacher_layer": "features.1", "kd_weight": 0.5}),
    ("attention", {"student_layers": ["features.0"], "teacher_layers": ["features.0"], "kd_weight": 0.5}),
])
def test_the_teacher_is_never_called_in_training_when_its_outputs_are_cached(tmp_path, method_name, options):
    data, teacher = images(), teacher_cnn()
    counter = CallCounter(teacher)
    method = create_method(method_name, cnn([8], seed=2), teacher, input_shape=SHAPE, **options)
    built = plan(data, teacher, tmp_path, method.teacher_layers)
    assert "computed once and cached" in built.note
    built.apply_to(method)
    counter.forbid()
    result = fit_method(method, built.batches, epochs=2, progress=False)
    assert len(result.history) == 2 and {"kd", "ce"} <= {key[6:] for key in result.history[0]}


def test_views_cache_the_features_of_each_augmented_image(tmp_path):
    data, teacher = images(), teacher_cnn()
    counter = CallCounter(teacher)
    built = plan(data, teacher, tmp_path, ["features.0"], augmentation=Augmentation(shift=1, flip=True), views=2)
    passes = counter.calls
    assert len(built.teacher_features["features.0"]) == 2 * len(data)
    built.batches.set_epoch(2)
    inputs, _, indices = next(iter(built.batches))
    assert bool((indices >= len(data)).all())                       # epoch 2 reads view 1's rows
    with torch.no_grad():
        live = teacher.features[0](inputs)
    assert torch.allclose(built.teacher_features["features.0"][indices], live, atol=2e-3, rtol=2e-3)
    again = plan(data, teacher, tmp_path, ["features.0"], augmentation=Augmentation(shift=1, flip=True), views=2)
    assert "read from the cache" in again.note and counter.calls == passes + 1   # the dummy forward sizing the layer


# ---------------------------------------------------------------- files, fingerprints, budget


def test_each_layer_is_a_file_of_its_own_and_adding_a_layer_computes_only_then(tmp_path):
    data, teacher = images(), teacher_cnn()
    stem = tmp_path / "explicit"
    counter = CallCounter(teacher)

    def outputs(layers):
        return cached_teacher_outputs(teacher, data.inputs, BatchIterator(data, 16), len(data), layers=layers,
                                      budget_mb=10, stem=stem, preprocessing=None)

    first = outputs(["features.0"])
    assert "computed once and cached" in first.note and isinstance(first.features["features.0"], FeatureTable)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "explicit-features_0.json", "explicit-features_0.npy", "explicit.json", "explicit.npy"]
    manifest = json.loads((tmp_path / "explicit-features_0.json").read_text())
    assert manifest["fingerprint"]["layer"] == "features.0" and manifest["shape"] == [len(data), 16, 4, 4]
    assert isinstance(first.features["features.0"].array, np.memmap)
    assert first.features["features.0"].array.dtype == np.float16
    calls = counter.calls
    assert "read from the cache" in outputs(["features.0"]).note and counter.calls == calls + 1   # the sizing forward
    both = outputs(["features.0", "features.1"])                     # one pass, for the new layer
    assert "computed once and cached" in both.note and counter.calls > calls
    assert (tmp_path / "explicit-features_1.npy").is_file()
    # A file holding another layer's features is refused, naming the layer.
    for suffix in (".npy", ".json"):
        (tmp_path / f"explicit-features_1{suffix}").write_bytes((tmp_path / f"explicit-features_0{suffix}").read_bytes())
    with pytest.raises(CheckpointError, match="built for different teacher layer; rebuild it"):
        outputs(["features.1"])
    with pytest.raises(CheckpointError, match="built for different teacher weights"):
        cached_teacher_outputs(cnn([16, 32], seed=9), data.inputs, BatchIterator(data, 16), len(data),
                               layers=["features.0"], budget_mb=10, stem=stem, preprocessing=None)


def test_features_over_the_budget_are_not_cached_and_the_teacher_runs_live(tmp_path):
    data, teacher = images(), teacher_cnn()
    counter = CallCounter(teacher)
    # features.0 is 16 x 4 x 4 float16 per image: 48 images take 0.024576 MB.
    built = plan(data, teacher, tmp_path, ["features.0"], feature_budget_mb=0.02)
    assert built.teacher_features is None and built.teacher_logits is None
    assert "teacher runs live every batch" in built.note and "0.02" in built.note
    assert "distill.feature_cache_mb" in built.note
    assert counter.calls == 1 and list(tmp_path.iterdir()) == []      # one dummy forward to size the layers
    assert plan(data, teacher, tmp_path, ["features.0"], feature_budget_mb=0.025).teacher_features is not None


def test_features_beyond_float16s_range_are_not_cached(tmp_path):
    data, teacher = images(), teacher_cnn()
    with torch.no_grad():
        teacher.features[0][0].weight.mul_(1e6)
    built = plan(data, teacher, tmp_path, ["features.0"])
    assert built.teacher_features is None and "exceed float16's range" in built.note


def test_teacher_cache_off_runs_the_teacher_live(tmp_path):
    data, teacher = images(), teacher_cnn()
    built = plan(data, teacher, tmp_path, ["features.0"], cache="off")
    assert built.teacher_features is None and built.teacher_logits is None and "teacher_cache: off" in built.note
    assert list(tmp_path.iterdir()) == []


def test_precompute_outputs_places_features_by_sample_index():
    data, teacher = images(), teacher_cnn()
    logits, features = precompute_outputs(teacher, BatchIterator(data, 10, shuffle=True, seed=3), len(data),
                                          {"stage": teacher.features[0]})
    with torch.no_grad():
        assert torch.allclose(logits, teacher(data.inputs), atol=1e-5)
        expected = teacher.features[0](data.inputs)
    assert features["stage"].dtype == torch.float16
    assert torch.equal(features["stage"], expected.half())


# ---------------------------------------------------------------- through a run and the CLI


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory):
    """A small digits CNN teacher (3 epochs): feature methods need convolutional stages."""
    output_dir = tmp_path_factory.mktemp("feature-cache") / "teacher"
    return run(build_config(run_config(output_dir, role="teacher", model={"name": "cnn", "channels": [8, 16]},
                                       data={"dataset": "digits", "val_fraction": 0.15},
                                       train={"epochs": 3, "batch_size": 64, "lr": 0.01})))


FEATURE_METHODS = {
    "fitnet": {"method": "fitnet", "student_layer": "features.1", "teacher_layer": "features.1", "hint_weight": 10.0},
    "attention": {"method": "attention", "student_layers": ["features.0", "features.1"],
                  "teacher_layers": ["features.0", "features.1"]},
}


def distil(tmp_path, teacher, name, cache, **distill):
    config = run_config(tmp_path / name, model={"name": "cnn", "channels": [8, 16]},
                        data={"dataset": "digits", "val_fraction": 0.15},
                        train={"epochs": 3, "batch_size": 64, "lr": 0.01},
                        distill={"teacher": str(teacher), "teacher_cache": cache, **distill})
    directory = run(build_config({**config, "progress": True}))
    history = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return history, json.loads((directory / "evaluation.json").read_text())


@pytest.mark.parametrize("method", sorted(FEATURE_METHODS))
def test_a_run_with_cached_features_trains_the_same_student_as_with_the_live_teacher(tmp_path, cnn_teacher, method,
                                                                                     capsys):
    options = {**FEATURE_METHODS[method], "kd_weight": 0.5}
    live, live_test = distil(tmp_path, cnn_teacher, "live", "off", **options)
    assert "runs live every batch" in capsys.readouterr().err
    cached, cached_test = distil(tmp_path, cnn_teacher, "cached", str(tmp_path / "cache"), **options)
    assert "computed once and cached" in capsys.readouterr().err
    again, _ = distil(tmp_path, cnn_teacher, "again", str(tmp_path / "cache"), **options)
    assert "read from the cache" in capsys.readouterr().err
    assert [record["train/loss"] for record in again] == [record["train/loss"] for record in cached]
    # float16 teacher outputs move each epoch's loss by about 1e-4 relative; accuracies by a sample or two
    # (216 validation, 360 test samples).
    for live_record, cached_record in zip(live, cached, strict=True):
        assert cached_record["train/loss"] == pytest.approx(live_record["train/loss"], rel=1e-3)
        assert cached_record["val/accuracy"] == pytest.approx(live_record["val/accuracy"], abs=2.5 / 216)
    assert cached_test["accuracy"] == pytest.approx(live_test["accuracy"], abs=2.5 / 360)
    assert cached_test["accuracy"] > 0.2 and cached[-1]["train/loss"] < 0.7 * cached[0]["train/loss"]  # it learned


def test_cache_command_builds_the_features_a_config_needs_and_refuses_beyond_the_budget(tmp_path, cnn_teacher):
    stem = tmp_path / "explicit"
    document = run_config(tmp_path / "out", model={"name": "cnn", "channels": [8]},
                          data={"dataset": "digits", "val_fraction": 0.15},
                          distill={"teacher": str(cnn_teacher), "teacher_cache": str(stem), **FEATURE_METHODS["fitnet"],
                                   "student_layer": "features.0"})
    result = invoke("cache", write_yaml(tmp_path / "run.yaml", document))
    assert_ok(result)
    assert "computed once and cached" in result.stdout and (tmp_path / "explicit-features_1.npy").is_file()
    document["distill"]["feature_cache_mb"] = 0.1
    assert_user_error(invoke("cache", write_yaml(tmp_path / "small.yaml", document)),
                      "teacher runs live every batch", "features.1", "distill.feature_cache_mb (0.1)")


def test_a_bare_off_in_yaml_turns_the_cache_off(tmp_path):
    from distillery.app.config.files import load_config

    path = write_yaml(tmp_path / "run.yaml", "output_dir: out\ndistill:\n  teacher: t\n  teacher_cache: off\n")
    assert load_config(path).distill.teacher_cache == "off"                 # YAML 1.1 alone would read false
    assert load_config(path, ["distill.teacher_cache=off"]).distill.teacher_cache == "off"
