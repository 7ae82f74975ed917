"""Export (ONNX, .pt2), int8 quantization and the distillation-versus-quantization report, on tiny digits models."""
import json
import re
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from cli_helpers import DIGITS_TEST_SAMPLES, PNG_MAGIC, assert_ok, assert_user_error, invoke, snapshot
from distillery import compress_report, export_model, quantize_model
from distillery.compress import export as export_module
from distillery.config import build_config
from distillery.errors import DataError
from distillery.models.checkpoint import load_model
from distillery.runs import checkpoint_data, run

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


def write_npz(path, side):
    inputs = np.random.default_rng(0).random((40, 1, side, side), dtype=np.float32)
    labels = np.arange(40) % 10
    np.savez(path, x_train=inputs, y_train=labels, x_test=inputs[:10], y_test=labels[:10])
    return path


def test_calibration_from_another_dataset(runs, tmp_path):
    result = quantize_model(runs["teacher"], mode="static", calibration_dataset="npz", calibration_samples=30,
                            calibration_path=str(write_npz(tmp_path / "other.npz", 8)), output=tmp_path / "t.onnx")
    assert result.calibration_samples == 30 and result.int8_accuracy > 0.5
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
    assert_user_error(invoke("export", run_dir), "cannot export", "to ONNX", "data-dependent")
    assert_user_error(invoke("export", run_dir, "--format", "pt2"), "cannot export", "torch.export (.pt2)",
                      "data-dependent")
    assert snapshot(run_dir) == before


def test_exceeding_the_tolerance_fails_saying_by_how_much(runs, tmp_path):
    target = tmp_path / "model.onnx"
    message = assert_user_error(invoke("export", runs["distilled"], "-o", target, "--tolerance", "0"),
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
