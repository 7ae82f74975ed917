"""Export (ONNX, .pt2), int8 quantization and the distillation-versus-quantization report, on tiny digits models."""
import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from cli_helpers import DIGITS_TEST_SAMPLES, PNG_MAGIC, assert_ok, assert_user_error, invoke, snapshot
from torch import nn

from distillery import compress_report, export_model, quantize_model
from distillery.app.config.files import build_config
from distillery.app.steps.prepared_data import checkpoint_data
from distillery.app.workflows.run import run
from distillery.compress import export as export_module
from distillery.compress import quantize as quantize_module
from distillery.compress import comparison as report_module
from distillery.compress.calibration import CalibrationData, check_calibration_range
from distillery.compress.export import write_verified
from distillery.compress.quantize import quantize_onnx
from distillery.compress.source import load_source
from distillery.data import Normalizer
from distillery.errors import DataError
from distillery.models.checkpoint import load_model

COMMON = {"data": {"dataset": "digits"}, "progress": False, "measure_latency": False}
BUDGET = {"epochs": 2, "lr": 0.01, "batch_size": 64}
STUDENT = {"name": "mlp", "hidden": [64]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small batch-norm CNN teacher, an MLP student from scratch and the same student distilled from it."""
    root = tmp_path_factory.mktemp("compress")

    def train(name, model, **sections):
        return run(build_config({**COMMON, "output_dir": str(root / name), "role": name, "model": model,
                                 "train": BUDGET, **sections}))

    teacher = train("teacher", {"name": "cnn", "channels": [8, 16]})
    return {"teacher": teacher, "scratch": train("scratch", STUDENT),
            "distilled": train("distilled", STUDENT, distill={"teacher": str(teacher), "temperature": 4.0,
                                                              "alpha": 0.5})}


def reference(run_dir):
    """The checkpoint's PyTorch model (eval mode) and its test set in its recorded preprocessing."""
    model, metadata = load_model(run_dir)
    return model.eval(), metadata, checkpoint_data(run_dir, metadata).test


def ops(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def onnx_logits(path, inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"inputs": inputs.numpy()})[0]


def test_onnx_export_holds_only_the_student_and_matches_pytorch(runs, tmp_path):
    model, metadata, test = reference(runs["distilled"])
    result = export_model(runs["distilled"], output=tmp_path / "student.onnx")
    assert result.path == tmp_path / "student.onnx" and result.max_abs_diff <= 1e-4 and result.samples == 256
    graph = onnx.load(str(result.path)).graph
    # The float tensors are the weights; an int64 one holds the flatten's target shape.
    stored = sum(int(np.prod(tensor.dims)) for tensor in graph.initializer if tensor.data_type == onnx.TensorProto.FLOAT)
    # Only the student: no teacher, adapter or auxiliary head went into the file.
    assert stored == metadata["parameters"] == sum(parameter.numel() for parameter in model.parameters())
    assert result.parameters == metadata["parameters"]
    # Checked here with a plain session, whatever the export's own verification did; any batch size runs.
    for size in (1, 7, DIGITS_TEST_SAMPLES):
        with torch.no_grad():
            expected = model(test.inputs[:size]).numpy()
        assert np.abs(onnx_logits(result.path, test.inputs[:size]) - expected).max() <= 1e-4


def test_onnx_export_folds_batch_norm_into_the_convolutions(runs, tmp_path):
    model, metadata, test = reference(runs["teacher"])
    run_copy = shutil.copytree(runs["teacher"], tmp_path / "teacher")
    result = export_model(run_copy)
    assert result.path == run_copy / "model.onnx"  # beside the checkpoint by default
    with torch.no_grad():
        expected = model(test.inputs).numpy()
    assert np.abs(onnx_logits(result.path, test.inputs) - expected).max() <= 1e-4
    # Each batch norm's scale and shift (2 x channels) became one bias per channel of the conv before it.
    folded = sum(module.num_features for module in model.modules() if isinstance(module, nn.BatchNorm2d))
    assert folded == 8 + 16
    assert result.parameters == metadata["parameters"] - folded


@pytest.mark.parametrize("role", ["distilled", "teacher"])
def test_pt2_export_loads_with_torch_export_and_matches_pytorch(runs, tmp_path, role):
    model, metadata, test = reference(runs[role])
    result = export_model(runs[role], format="pt2", output=tmp_path / "model.pt2")
    assert result.max_abs_diff <= 1e-4
    program = torch.export.load(str(result.path))
    stored = sum(program.state_dict[name].numel() for name in program.graph_signature.parameters)
    assert stored == result.parameters == metadata["parameters"]
    with torch.no_grad():
        difference = (program.module()(test.inputs[:5]) - model(test.inputs[:5])).abs().max().item()
    assert difference <= 1e-4


def test_dynamic_quantization_of_a_linear_model(runs, tmp_path):
    _, _, test = reference(runs["distilled"])
    result = quantize_model(runs["distilled"], output=tmp_path / "student.int8.onnx")
    assert result.mode == "dynamic" and result.calibration_samples == 0
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops(result.path)
    assert result.int8_size_bytes < result.fp32_size_bytes / 2  # int8 weights are a quarter of fp32's
    predictions = onnx_logits(result.path, test.inputs).argmax(axis=1)
    assert result.int8_accuracy == pytest.approx(float((predictions == test.labels.numpy()).mean()))
    assert abs(result.int8_accuracy - result.fp32_accuracy) <= 0.03 and result.agreement >= 0.95


def test_static_quantization_of_a_convolutional_model(runs, tmp_path):
    _, _, test = reference(runs["teacher"])
    result = quantize_model(runs["teacher"], output=tmp_path / "teacher.int8.onnx")
    assert result.mode == "static" and result.calibration_samples == 512
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops(result.path)
    weights = [tensor for tensor in onnx.load(str(result.path)).graph.initializer
               if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 4]
    assert sorted(tensor.dims[0] for tensor in weights) == [8, 16]  # both convolutions' weights are int8
    assert result.int8_size_bytes < result.fp32_size_bytes
    predictions = onnx_logits(result.path, test.inputs).argmax(axis=1)
    assert result.int8_accuracy == pytest.approx(float((predictions == test.labels.numpy()).mean()))
    assert abs(result.int8_accuracy - result.fp32_accuracy) <= 0.03


def write_npz(path, side, scale=1.0):
    inputs = np.random.default_rng(0).random((40, 1, side, side), dtype=np.float32) * np.float32(scale)
    labels = np.arange(40) % 10
    np.savez(path, x_train=inputs, y_train=labels, x_test=inputs[:10], y_test=labels[:10])
    return path


def test_calibration_from_another_dataset(runs, tmp_path):
    result = quantize_model(runs["teacher"], mode="static", calibration_dataset="npz", calibration_samples=30,
                            calibration_path=str(write_npz(tmp_path / "other.npz", 8)), output=tmp_path / "t.onnx")
    assert result.calibration_samples == 30 and result.int8_accuracy > 0.5
    # Random 0..1 images are on the digits' own scale: nothing to say about them.
    assert not any("calibration data" in warning and "scale" in warning for warning in result.warnings)
    with pytest.raises(DataError, match=r"\(1, 4, 4\).*\(1, 8, 8\)"):
        quantize_model(runs["teacher"], calibration_dataset="npz", output=tmp_path / "small.onnx",
                       calibration_path=str(write_npz(tmp_path / "small.npz", 4)))
    assert not (tmp_path / "small.onnx").exists()


def test_compress_report_measures_five_models_without_touching_the_runs(runs, tmp_path):
    before = {role: snapshot(run_dir) for role, run_dir in runs.items()}
    result = invoke("compress-report", "--teacher", runs["teacher"], "--scratch", runs["scratch"],
                    "--distilled", runs["distilled"], "-o", tmp_path / "out")
    assert_ok(result)
    assert {role: snapshot(run_dir) for role, run_dir in runs.items()} == before
    table_rows = [line for line in result.stdout.splitlines() if re.match(r"\| (teacher|scratch|distilled) ", line)]
    assert [row.split(" | ")[:2] for row in table_rows] == [
        ["| teacher", "fp32"], ["| teacher", "int8 (static)"], ["| scratch", "fp32"], ["| distilled", "fp32"],
        ["| distilled", "int8 (dynamic)"]]
    out = tmp_path / "out"
    document = json.loads((out / "compress_report.json").read_text())
    assert document["samples"] == DIGITS_TEST_SAMPLES and len(document["rows"]) == 5
    for row in document["rows"]:
        assert (out / row["file"]).stat().st_size == row["size_bytes"]
        assert 0.5 < row["accuracy"] <= 1.0
        latency = row["latency"]
        assert latency["batch1_p95_ms"] >= latency["batch1_median_ms"] > 0 and latency["batch256_samples_per_s"] > 0
        assert latency["torch_version"] == torch.__version__ and latency["cpu"] and latency["threads"] >= 1
        assert latency["runtime"] == f"onnxruntime {onnxruntime.__version__}" and isinstance(latency["stable"], bool)
    rows = {(row["model"], row["precision"]): row for row in document["rows"]}
    assert rows[("teacher", "int8")]["size_bytes"] < rows[("teacher", "fp32")]["size_bytes"]
    assert rows[("distilled", "int8")]["size_bytes"] < rows[("distilled", "fp32")]["size_bytes"]
    assert table_rows[0] in (out / "compress_report.md").read_text()
    assert (out / "compress.png").read_bytes().startswith(PNG_MAGIC)


# ---------------------------------------------------------------- user errors: one line, nothing written


def test_a_path_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "notes.safetensors").write_bytes(b"")
    assert_user_error(invoke("export", tmp_path), str(tmp_path), "holds no model.safetensors")
    assert_user_error(invoke("quantize", tmp_path / "notes.json"), "is not a distillery checkpoint")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.json", "notes.safetensors"]


def test_a_forward_the_exporters_cannot_capture(tmp_path):
    run_dir = run(build_config({**COMMON, "output_dir": str(tmp_path / "untraceable"), "train": {"epochs": 1},
                                "model": {"name": "untraceable_model:make"}}))
    before = snapshot(run_dir)
    # The checkpoint names a factory: only the user's own --allow-factory lets it be built.
    assert_user_error(invoke("export", run_dir), "'untraceable_model:make'", "--allow-factory")
    allowed = ("--allow-factory", "untraceable_model:make")
    assert_user_error(invoke("export", run_dir, *allowed), "cannot export", "to ONNX", "data-dependent")
    assert_user_error(invoke("export", run_dir, "--format", "pt2", *allowed), "cannot export",
                      "torch.export (.pt2)", "data-dependent")
    assert snapshot(run_dir) == before


def test_exceeding_the_tolerance_fails_saying_by_how_much(runs, tmp_path):
    target = tmp_path / "model.onnx"
    # The teacher: its batch norms are folded into the convolutions, so the export never rounds exactly like
    # PyTorch (the MLP student's export can match it bit for bit, single-threaded).
    message = assert_user_error(invoke("export", runs["teacher"], "-o", target, "--tolerance", "0"),
                                "differs from PyTorch by up to", "tolerance 0")
    # The measured difference is float rounding: above zero, far below the default tolerance.
    difference = float(re.search(r"by up to (\S+) on", message).group(1))
    assert 0 < difference < 1e-4
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_wrong_artifact_fails_verification(runs, tmp_path, monkeypatch):
    write_onnx = export_module.WRITERS["onnx"]

    def write_with_shifted_bias(model, inputs, path, stem):
        shifted = load_model(runs["distilled"])[0].eval()
        with torch.no_grad():
            shifted.classifier.bias += 0.01
        write_onnx(shifted, inputs, path, stem)

    monkeypatch.setitem(export_module.WRITERS, "onnx", write_with_shifted_bias)
    message = assert_user_error(invoke("export", runs["distilled"], "-o", tmp_path / "model.onnx"),
                                "differs from PyTorch by up to 0.01 ")
    assert "tolerance 0.0001" in message and list(tmp_path.iterdir()) == []


def test_calibration_data_of_the_wrong_shape(runs, tmp_path):
    small = write_npz(tmp_path / "small.npz", 4)
    assert_user_error(invoke("quantize", runs["teacher"], "--calibration-dataset", "npz", "--calibration-path", small,
                             "-o", tmp_path / "model.int8.onnx"), "(1, 4, 4)", "(1, 8, 8)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["small.npz"]


def test_the_comparison_refuses_models_tested_on_different_data(runs, tmp_path):
    subset = run(build_config({**COMMON, "output_dir": str(tmp_path / "low_digits"), "train": {"epochs": 1},
                               "model": STUDENT, "data": {"dataset": "digits", "classes": ["0", "1", "2", "3", "4"]}}))
    with pytest.raises(DataError, match=r"the teacher .*classes 0, 1, 2, 3, 4\) but the distilled .*360 samples"):
        compress_report(subset, runs["scratch"], runs["distilled"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_options_that_do_not_apply(runs, tmp_path):
    assert_user_error(invoke("export", runs["distilled"], "--format", "tflite"), "'tflite'", "onnx, pt2")
    assert_user_error(invoke("quantize", runs["distilled"], "--mode", "fp16"), "'fp16'", "auto, dynamic, static")
    assert_user_error(invoke("quantize", runs["distilled"], "--calibration-samples", "100"),
                      "dynamic quantization needs no calibration", "no convolutions")
    assert_user_error(invoke("export", runs["distilled"], "--tolerance", "-1"), "tolerance must be a number >= 0")


# ---------------------------------------------------------------- calibration on the model's scale, int8 drops flagged


def test_calibration_data_on_another_scale_is_refused_in_one_line(runs, tmp_path):
    pixels = write_npz(tmp_path / "pixels.npz", 8, scale=255)  # 0..255 floats for a model of 0..1 digits
    message = assert_user_error(invoke("quantize", runs["teacher"], "--calibration-dataset", "npz",
                                       "--calibration-path", pixels, "-o", tmp_path / "model.int8.onnx"),
                                str(pixels), "is not on the model's input scale", "test inputs span 0..1 (",
                                "model.json's preprocessing: mean [", "divided by 255")
    assert re.search(r"its values span [0-9.e-]+\.\.255 where", message)
    assert re.search(r"spread [0-9.]+x wider", message)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pixels.npz"]


def test_calibration_data_somewhat_off_scale_is_quantized_with_a_warning(runs, tmp_path):
    wide = write_npz(tmp_path / "wide.npz", 8, scale=4)  # 0..4: off, but not off enough to be sure
    result = quantize_model(runs["teacher"], calibration_dataset="npz", calibration_path=str(wide),
                            output=tmp_path / "wide.int8.onnx")
    assert result.path.exists()
    assert result.warnings[0].startswith(f"calibration data {wide} (train) is on a somewhat different scale")
    assert re.search(r"values span [0-9.e-]+\.\.4 where .* spread [0-9.]+x wider", result.warnings[0])


def fake_source(test_inputs, normalizer=None):
    """What the range check reads of a checkpoint: its test inputs (in its preprocessing) and that preprocessing."""
    metadata = {"preprocessing": normalizer.to_dict() if normalizer is not None else None}
    return SimpleNamespace(stem="runs/model/model", metadata=metadata,
                           data=SimpleNamespace(test=SimpleNamespace(inputs=test_inputs), normalizer=normalizer))


def test_the_range_check_follows_the_recorded_preprocessing():
    unit = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # 0..1 images
    raw_model = fake_source(unit)  # model.json: "preprocessing": null, raw inputs
    assert check_calibration_range(raw_model, unit.flip(0), "same scale") is None
    with pytest.raises(DataError, match=r"pixels .*\(model.json records no preprocessing: raw inputs\).*255x wider"):
        check_calibration_range(raw_model, unit * 255, "pixels")
    # A model trained on raw 0..255 pixels, calibrated on 0..1 ones.
    with pytest.raises(DataError, match=r"span [0-9.e-]+\.\.1 where .* span [0-9.e-]+\.\.255 .*255x narrower"):
        check_calibration_range(fake_source(unit * 255), unit, "scaled")
    # With a recorded normaliser, both sides are compared in its output and reported on the raw scale.
    normalizer = Normalizer((0.5,), (0.29,))
    normalised_model = fake_source(normalizer(unit), normalizer)
    assert check_calibration_range(normalised_model, normalizer(unit.flip(0)), "same scale") is None
    with pytest.raises(DataError, match=r"span [0-9.e-]+\.\.255 where .*mean \[0\.5\], std \[0\.29\]"):
        check_calibration_range(normalised_model, normalizer(unit * 255), "pixels")
    warning = check_calibration_range(normalised_model, normalizer(unit * 3), "tripled")
    assert warning.startswith("calibration data tripled is on a somewhat different scale")
    assert "3x wider" in warning and "standard deviations off centre" in warning


def test_an_int8_accuracy_drop_is_flagged_in_the_result(runs, tmp_path):
    source = load_source(runs["teacher"])
    fp32 = write_verified(source, "onnx", tmp_path / "fp32.onnx", 1e-4)
    # Calibrated on one constant image, the activation ranges are far too narrow for real digits.
    result = quantize_onnx(source, fp32.path, tmp_path / "blank.int8.onnx", torch.zeros(64, 1, 8, 8))
    assert result.accuracy_drop_points == pytest.approx(100 * (result.fp32_accuracy - result.int8_accuracy))
    assert result.accuracy_drop_points > 1 and result.accuracy_drop_flagged
    assert len(result.warnings) == 1
    assert f"is {result.accuracy_drop_points:.2f} points below fp32's" in result.warnings[0]
    assert "calibration data is preprocessed like the model's inputs" in result.warnings[0]


def test_the_quantize_command_flags_an_accuracy_drop(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_module, "calibration_inputs", lambda *args: CalibrationData(torch.zeros(64, 1, 8, 8)))
    result = invoke("quantize", runs["teacher"], "-o", tmp_path / "blank.int8.onnx")
    assert_ok(result)
    accuracy_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("accuracy"))
    assert re.search(r"on 360 test samples  \(-[0-9]+\.[0-9]{2} points: DROP FLAGGED\)$", accuracy_line)
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: int8 accuracy ")


def test_the_compress_report_compares_no_unstable_latency(runs, tmp_path, monkeypatch):
    timings = iter([{"stable": False, "instability": "batch-1 round medians range 0.039-0.16 ms, more than 25% apart"}]
                   + [{"stable": True, "instability": None}] * 4)

    def fake_latency(session, input_shape):
        return {"batch1_median_ms": 0.1, "batch1_p95_ms": 0.2, "batch256_samples_per_s": 1e5, "threads": 1,
                "cpu": "test CPU", "torch_version": torch.__version__, **next(timings)}

    monkeypatch.setattr(report_module, "session_latency", fake_latency)
    result = compress_report(runs["teacher"], runs["scratch"], runs["distilled"], tmp_path / "out")
    text = result.markdown.read_text()
    assert "latency 1.00×" not in text and text.count("batch-1 latency not compared (a measurement was unstable)") == 3
    assert "- teacher fp32: latency measurement unstable (batch-1 round medians range 0.039-0.16 ms" in text
    assert "| 0.100 (unstable) | 0.200 | 100,000 (unstable) |" in text and "(test CPU, 1 threads)" in text
