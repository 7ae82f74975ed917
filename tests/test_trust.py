"""The trust boundary and what a teacher sees: a checkpoint never names code that runs, every teacher is fed its own
preprocessing whatever its source, stored numbers stay finite, the API leaves its caller's objects as it found them,
and a run never writes outside its own directory."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, run_config, write_yaml
from safetensors.torch import load_file, save_file
from torch import nn

import distillery
from distillery.app.config.files import build_config
from distillery.app.steps.evaluation import evaluate_checkpoint
from distillery.app.workflows.run import run
from distillery.app.steps.load_teachers import teachers_and_data
from distillery.app.steps.transfer_batches import transfer_plan
from distillery.data import ArrayDataset, Normalizer
from distillery.engine.trainer import check_finite
from distillery.errors import CheckpointError, ModelError, NumericalError
from distillery.methods import HintonDistillation, StepOutput
from distillery.models.checkpoint import load_model
from distillery.models.hooks import capture_features, resolve_module
from distillery.teachers.cache import CacheFiles, cache_key, save_cache
from distillery.teachers.ensemble import EnsembleTeacher
from distillery.teachers.label_space import LabelSpaceMerge

DIGITS = [str(digit) for digit in range(10)]
COMMON = {"progress": False, "measure_latency": False, "model": {"name": "mlp", "hidden": [16]},
          "train": {"epochs": 2, "batch_size": 128, "lr": 0.01}}


def _train(directory: Path, name: str, **data) -> Path:
    document = {**COMMON, "output_dir": str(directory / name), "data": {"dataset": "digits", **data}}
    return run(build_config(document))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Digits teachers trained on raw inputs and on normalised ones, and two half-class teachers, one of each."""
    directory = tmp_path_factory.mktemp("trust-teachers")
    return {"raw": _train(directory, "raw", normalize=False), "normalised": _train(directory, "normalised"),
            "low-raw": _train(directory, "low-raw", normalize=False, classes=DIGITS[:5]),
            "high-normalised": _train(directory, "high-normalised", classes=DIGITS[5:])}


class OwnPipeline(nn.Module):
    """The reference: a teacher loaded afresh, fed raw inputs through exactly the preprocessing it records."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.model, metadata = load_model(path)
        self.model.eval()
        recorded = metadata["preprocessing"]
        self.normalizer = Normalizer.from_dict(recorded) if recorded else None

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(raw) if self.normalizer is not None else raw)


def _distill_config(tmp_path, teacher, **distill):
    # The student keeps the default normalisation: its pipeline differs from a raw teacher's.
    return build_config({**COMMON, "output_dir": str(tmp_path / "student"), "data": {"dataset": "digits"},
                         "distill": {"teacher": teacher, **distill}})


def _raw_and_student_inputs(data):
    raw = data.train.inputs[:300]
    return raw, data.normalizer(raw)


# ---------------------------------------------------------------- 2. every teacher sees its own inputs


@pytest.mark.parametrize("names, reference", [
    (["raw"], lambda own: own[0]),
    (["normalised"], lambda own: own[0]),
    (["raw", "normalised"], lambda own: EnsembleTeacher(own, combine="probabilities", temperature=4.0)),
    (["low-raw", "high-normalised"], lambda own: LabelSpaceMerge(own, [DIGITS[:5], DIGITS[5:]], DIGITS)),
], ids=["single-raw", "single-normalised", "ensemble-of-two-pipelines", "merged-label-spaces"])
def test_the_live_teacher_sees_its_own_pipeline(teachers, tmp_path, names, reference):
    config = _distill_config(tmp_path, [str(teachers[name]) for name in names])
    _, data, teacher = teachers_and_data(config)
    assert data.normalizer is not None  # the student normalises; some teachers here do not
    raw, student_inputs = _raw_and_student_inputs(data)
    expected = reference([OwnPipeline(teachers[name]) for name in names])
    with torch.no_grad():
        assert torch.allclose(teacher(student_inputs), expected(raw), atol=1e-4)


@pytest.mark.parametrize("cache", ["off", "auto", "explicit"])
def test_cached_targets_are_the_teachers_outputs_on_its_own_pipeline(teachers, tmp_path, cache):
    setting = str(tmp_path / "cache" / "raw-teacher") if cache == "explicit" else cache
    config = _distill_config(tmp_path, str(teachers["raw"]), teacher_cache=setting)
    loaded, data, teacher = teachers_and_data(config)
    plan = transfer_plan(config, data, loaded, teacher)
    indices = torch.arange(len(data.train))
    with torch.no_grad():
        expected = OwnPipeline(teachers["raw"])(data.train.inputs)
    # float16 in a cache file: about three significant digits.
    assert torch.allclose(plan.teacher_logits[indices].float(), expected, rtol=2e-3, atol=2e-3)
    assert (plan.teacher_logits[indices].argmax(1) == expected.argmax(1)).float().mean() > 0.999


@pytest.mark.parametrize("cache", ["off", "auto"])
def test_a_feature_method_reads_the_teachers_features_on_its_own_pipeline(teachers, tmp_path, cache):
    config = _distill_config(tmp_path, str(teachers["raw"]), method="fitnet", student_layer="features.0",
                             teacher_layer="features.0", teacher_cache=cache)
    loaded, data, teacher = teachers_and_data(config)
    raw, student_inputs = _raw_and_student_inputs(data)
    reference = OwnPipeline(teachers["raw"])
    with torch.no_grad(), capture_features({"hint": resolve_module(reference.model, "features.0", "t")}) as own:
        reference(raw)
    plan = transfer_plan(config, data, loaded, teacher)
    if cache == "off":  # the teacher runs live: its hooked layer sees what its own pipeline gives it
        with torch.no_grad(), capture_features({"hint": resolve_module(teacher, "features.0", "t")}) as live:
            teacher(student_inputs)
        assert plan.teacher_features is None and torch.allclose(live["hint"], own["hint"], atol=1e-4)
    else:
        cached = plan.teacher_features["features.0"][torch.arange(len(raw))]
        assert torch.allclose(cached, own["hint"], rtol=2e-3, atol=2e-3)


def test_evaluating_with_a_teacher_feeds_it_its_own_pipeline(teachers):
    # The checkpoint normalises, the teacher does not: agreement must be measured on the teacher's own inputs.
    result = evaluate_checkpoint(teachers["normalised"], teacher=teachers["raw"], latency=False)
    model, metadata = load_model(teachers["normalised"])
    from distillery.app.steps.prepared_data import checkpoint_data
    test = checkpoint_data(teachers["normalised"], metadata).test
    raw = Normalizer.from_dict(metadata["preprocessing"]).denormalize(test.inputs)
    with torch.no_grad():
        agreement = (model(test.inputs).argmax(1) == OwnPipeline(teachers["raw"])(raw).argmax(1)).float().mean()
    assert result["agreement"] == pytest.approx(float(agreement))


# ---------------------------------------------------------------- 1. a checkpoint never names code that runs


def test_a_checkpoint_naming_a_factory_is_refused_before_anything_runs(teachers, tmp_path):
    marker = tmp_path / "created-by-the-checkpoint"
    copy = tmp_path / "teacher"
    copy.mkdir()
    for name in ("model.safetensors", "model.json"):
        (copy / name).write_bytes((teachers["raw"] / name).read_bytes())
    metadata = json.loads((copy / "model.json").read_text())
    metadata["architecture"] = {"name": "os:mkdir", "path": str(marker)}
    (copy / "model.json").write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match="--allow-factory os:mkdir"):
        load_model(copy)
    with pytest.raises(CheckpointError, match="built-in"):
        teachers_and_data(_distill_config(tmp_path, str(copy)))
    assert not marker.exists()
    # Allowed by the user's own word, the factory is honoured (and here, being os.mkdir, it runs and fails).
    with pytest.raises(CheckpointError, match="returned NoneType"):
        load_model(copy, allow_factories=["os:mkdir"])
    assert marker.is_dir()


def test_a_factory_named_by_the_users_config_is_allowed_for_its_teachers(tmp_path):
    teacher = run(build_config({**COMMON, "output_dir": str(tmp_path / "own"), "train": {"epochs": 1},
                                "model": {"name": "step_model:make"}}))
    with pytest.raises(CheckpointError, match="step_model:make"):
        teachers_and_data(_distill_config(tmp_path, str(teacher)))
    config = _distill_config(tmp_path, str(teacher)).model_copy(update={"allow_factories": ["step_model:make"]})
    loaded, _, _ = teachers_and_data(config)
    assert type(loaded[0].model).__name__ == "StepModel"


# ---------------------------------------------------------------- 3. stored numbers stay finite


def _scaled_teacher(source: Path, target: Path, factor: float) -> Path:
    target.mkdir()
    state = load_file(str(source / "model.safetensors"))
    save_file({name: value * factor if name.startswith("classifier") else value for name, value in state.items()},
              str(target / "model.safetensors"))
    (target / "model.json").write_text((source / "model.json").read_text())
    return target


def test_logits_beyond_float16_are_cached_in_float32(teachers, tmp_path):
    huge = _scaled_teacher(teachers["raw"], tmp_path / "huge", 1e5)
    config = _distill_config(tmp_path, str(huge), teacher_cache=str(tmp_path / "cache" / "huge"))
    loaded, data, teacher = teachers_and_data(config)
    plan = transfer_plan(config, data, loaded, teacher)
    table = plan.teacher_logits[torch.arange(len(data.train))]
    with torch.no_grad():
        expected = OwnPipeline(huge)(data.train.inputs)
    assert expected.abs().max() > 65_504 and torch.isfinite(table).all()
    assert torch.allclose(table, expected, rtol=1e-5, atol=0.05)  # the normaliser round trip rounds
    assert json.loads((tmp_path / "cache" / "huge.json").read_text())["dtype"] == "float32"


def test_a_poisoned_cache_is_rebuilt_when_automatic_and_refused_when_named(teachers, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "auto"))
    config = _distill_config(tmp_path, str(teachers["raw"]))
    loaded, data, teacher = teachers_and_data(config)
    plan = transfer_plan(config, data, loaded, teacher)
    entry = next((tmp_path / "auto").glob("*.json"))
    manifest = json.loads(entry.read_text())
    poisoned = np.full(manifest["shape"], np.inf, dtype=np.float16)
    save_cache(CacheFiles(entry.with_suffix("")), poisoned, {k: manifest[k] for k in ("fingerprint", "classes", "top_k")})
    rebuilt = transfer_plan(config, data, loaded, teacher)
    indices = torch.arange(len(data.train))
    assert torch.isfinite(rebuilt.teacher_logits[indices]).all()
    assert torch.equal(rebuilt.teacher_logits[indices], plan.teacher_logits[indices])
    named = tmp_path / "named"
    save_cache(CacheFiles(named), poisoned, {k: manifest[k] for k in ("fingerprint", "classes", "top_k")})
    config = _distill_config(tmp_path, str(teachers["raw"]), teacher_cache=str(named))
    with pytest.raises(CheckpointError, match="infinite or NaN"):
        transfer_plan(config, data, loaded, teacher)
    assert cache_key(manifest["fingerprint"]) == entry.stem


def _step(student_logits, teacher_logits, **logs):
    return StepOutput(loss=torch.tensor(float("nan")), logits=torch.tensor(student_logits),
                      logs={name: torch.tensor(value) for name, value in logs.items()},
                      teacher_logits=None if teacher_logits is None else torch.tensor(teacher_logits))


@pytest.mark.parametrize("output, cause, not_said", [
    (_step([[1.0, 2.0]], [[float("nan"), 0.0]], kd=float("nan"), ce=0.5), "teacher's outputs are not finite", "lr"),
    (_step([[float("inf"), 2.0]], [[1.0, 0.0]], kd=float("nan")), "lower train.lr", "teacher's outputs"),
    (_step([[1.0, 2.0]], [[1.0, 0.0]], kd=float("nan"), ce=0.5), "loss part kd failed", "train.lr"),
])
def test_a_non_finite_loss_names_its_likely_cause(output, cause, not_said):
    with pytest.raises(NumericalError) as raised:
        check_finite(output, epoch=1, step=3)
    assert cause in str(raised.value) and not_said not in str(raised.value)
    assert "last.safetensors" not in str(raised.value)


def test_a_run_that_fails_in_its_first_epoch_names_no_checkpoint(tmp_path):
    config = write_yaml(tmp_path / "nan.yaml", run_config(
        tmp_path / "run", model={"name": "nan_model:make", "healthy_calls": 3}))
    message = assert_user_error(invoke("train", config), "epoch 1", "no epoch had finished")
    assert "last.safetensors" not in message


# ---------------------------------------------------------------- 4. one rule for alpha; gating after z-scoring


def test_standardised_targets_of_merged_teachers_give_gated_classes_nothing():
    torch.manual_seed(0)
    low, high = nn.Linear(6, 5), nn.Linear(6, 5)
    merge = LabelSpaceMerge([low, high], [DIGITS[:5], DIGITS[5:]], DIGITS)
    inputs, labels = torch.randn(8, 6), torch.tensor([1] * 8)
    for standardize in (False, True):
        method = HintonDistillation(nn.Linear(6, 10), merge, temperature=2.0, standardize=standardize)
        _, teacher_logits = method.soft_loss_inputs(torch.randn(8, 10), merge(inputs), labels)
        targets = torch.softmax(teacher_logits / 2.0, dim=-1)
        assert targets[:, 5:].sum(dim=1).max() < 1e-6  # class 1's teacher knows 0-4 only
        assert targets[:, :5].std(dim=1).min() > 1e-3  # the kept classes are not flattened to uniform


def test_without_labels_alpha_is_zero_in_a_config_run(teachers, tmp_path):
    config = build_config({**COMMON, "output_dir": str(tmp_path / "soft"), "data": {"dataset": "digits"},
                           "distill": {"teacher": str(teachers["raw"])}, "transfer": {"labels": False}})
    from distillery.app.steps.method import build_method
    _, data, teacher = teachers_and_data(config)
    method = build_method(config, nn.Linear(64, 10), teacher, data.test.input_shape, 10)
    assert method.alpha == 0.0


# ---------------------------------------------------------------- 5. the API leaves the caller's objects as they were


def test_distill_leaves_the_callers_teacher_trainable_and_in_its_mode():
    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)), ["a", "b", "c"])
    teacher, student = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.1), nn.Linear(8, 3)), nn.Linear(6, 3)
    teacher.train()
    teacher[0].weight.requires_grad_(False)  # the caller's own choice survives too
    distillery.distill(teacher, student, data, epochs=1, progress=False)
    assert teacher.training and all(module.training for module in teacher.modules())
    assert [p.requires_grad for p in teacher.parameters()] == [False, True, True, True]
    assert distillery.train(teacher, data, epochs=1, progress=False).model is teacher
    born = distillery.born_again(lambda: nn.Linear(6, 3), data, generations=1, teacher=teacher, epochs=1,
                                 progress=False)
    assert born.generations[0].model is teacher and teacher.training and teacher[2].weight.requires_grad


# ---------------------------------------------------------------- 6. nothing outside the run's own directory


def test_an_empty_output_dir_never_touches_the_users_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    config = write_yaml(folder / "config.yaml", {**run_config(""), "model": {"name": "mlp", "hidden": [4]}})
    before = config.read_bytes()
    monkeypatch.chdir(folder)
    assert_user_error(invoke("train", "config.yaml"), "output_dir ''", "current folder")
    assert config.read_bytes() == before and sorted(os.listdir(folder)) == ["config.yaml"]


def test_a_run_directory_is_marked_and_replaced_only_with_overwrite(tmp_path):
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "run"))
    assert invoke("train", config).exit_code == 0
    assert (tmp_path / "run" / ".distillery-run").is_file()
    assert_user_error(invoke("train", config), "finished run", "--overwrite")
    assert invoke("train", config, "--overwrite").exit_code == 0


# ---------------------------------------------------------------- 10. small things


def test_version_and_the_method_name_in_the_compile_refusal(teachers, tmp_path):
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("distillery ")
    config = write_yaml(tmp_path / "fitnet.yaml", run_config(
        tmp_path / "fitnet", train={"epochs": 1, "compile": True},
        distill={"teacher": str(teachers["normalised"]), "method": "fitnet", "student_layer": "features.0",
                 "teacher_layer": "features.0"}))
    assert_user_error(invoke("distill", config), "method 'fitnet'")


@pytest.mark.parametrize("factory, raised", [("raising_model:make", "not mounted"),
                                             ("raising_import:make", "MODEL_ROOT")], ids=["calling", "importing"])
def test_a_failing_user_factory_shows_its_traceback_with_debug(tmp_path, factory, raised):
    config = write_yaml(tmp_path / "raise.yaml", run_config(tmp_path / "run", model={"name": factory}))
    result = invoke("--debug", "train", config)
    assert result.exit_code == 2 and "Traceback" in result.stderr and raised in result.stderr
    assert f'tests/{factory.split(":")[0]}.py' in result.stderr  # the user's own frame is shown
    with pytest.raises(ModelError, match="raising_model:make"):
        run(build_config(run_config(tmp_path / "run", model={"name": "raising_model:make"})))


def test_a_report_goes_only_into_a_new_empty_or_earlier_report_folder(teachers, tmp_path):
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "report.md").write_text("my own report\n")
    assert_user_error(invoke("report", teachers["raw"], "-o", folder), str(folder), "not a distillery report's")
    assert (folder / "report.md").read_text() == "my own report\n" and len(list(folder.iterdir())) == 1
    output = tmp_path / "report"
    for _ in range(2):  # the second time it replaces its own files
        assert invoke("report", teachers["raw"], "-o", output).exit_code == 0
    assert (output / ".distillery-report").is_file()
