"""Int8 ONNX models with ONNX Runtime's quantization: dynamic for linear layers, static (calibrated) for convolutions."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from distillery.atomic import atomic_write
from distillery.compress.export import DEFAULT_TOLERANCE, write_verified
from distillery.compress.quiet import quiet
from distillery.compress.runtime import inference_session, session_accuracy
from distillery.compress.source import DEFAULT_CALIBRATION_SAMPLES, CheckpointSource, calibration_inputs, load_source
from distillery.errors import ConfigError

MODES = ("auto", "dynamic", "static")
_CALIBRATION_BATCH = 64


@dataclass
class QuantizeResult:
    """The int8 model and what it cost: test accuracy of the fp32 and int8 ONNX models, the share of test
    samples where their top-1 predictions agree, and both files' sizes on disk."""

    path: Path
    mode: str
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float
    fp32_size_bytes: int
    int8_size_bytes: int
    samples: int
    calibration_samples: int


def quantize_model(checkpoint: str | Path, *, mode: str = "auto", calibration_samples: int | None = None,
                   calibration_dataset: str | None = None, calibration_path: str | None = None,
                   output: str | Path | None = None) -> QuantizeResult:
    """Quantize a checkpoint's model to an int8 ONNX model and measure it against the fp32 one.

    ``mode``: "dynamic" (int8 weights, activations quantized on the fly: no calibration; for linear
    layers), "static" (QDQ, per-channel int8 weights, activation ranges calibrated on
    ``calibration_samples`` training inputs, default 512: convolutions run in int8 end to end), or "auto":
    static when the model has convolutions, else dynamic. The calibration inputs come from the checkpoint's
    own training split, or from ``calibration_dataset`` / ``calibration_path``, preprocessed as the
    checkpoint records. Default ``output``: ``<run>/model.int8.onnx``.

    Example::

        result = distillery.quantize_model("runs/teacher", mode="auto")
        print(result.mode, result.fp32_accuracy, result.int8_accuracy, result.int8_size_bytes)
    """
    if mode not in MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(MODES)}")
    source = load_source(checkpoint)
    target = Path(output) if output is not None else source.stem.with_name(source.stem.name + ".int8.onnx")
    # Calibration data is checked before anything is exported.
    calibration = _calibration_for(source, choose_mode(source.model, mode), mode, calibration_samples,
                                   calibration_dataset, calibration_path)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = write_verified(source, "onnx", Path(scratch) / "fp32.onnx", DEFAULT_TOLERANCE)
        return quantize_onnx(source, fp32.path, target, calibration)


def choose_mode(model: nn.Module, mode: str = "auto") -> str:
    """"auto" becomes "static" for a model with convolution layers, else "dynamic"; other modes stay.

    Example: ``choose_mode(cnn((1, 8, 8), 10))`` -> ``"static"``
    """
    if mode != "auto":
        return mode
    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    has_convolutions = any(isinstance(module, convolutions) for module in model.modules())
    return "static" if has_convolutions else "dynamic"


def _calibration_for(source: CheckpointSource, chosen: str, mode: str, samples: int | None,
                     dataset: str | None, data_path: str | None) -> torch.Tensor | None:
    if chosen == "dynamic":
        given = [name for name, value in (("calibration samples", samples), ("a calibration dataset", dataset),
                                           ("a calibration path", data_path)) if value is not None]
        if given:
            why = "the model has no convolutions, so auto chose dynamic" if mode == "auto" else "mode is dynamic"
            raise ConfigError(f"{given[0]} given, but dynamic quantization needs no calibration ({why}); "
                              "remove it or use --mode static")
        return None
    return calibration_inputs(source, samples or DEFAULT_CALIBRATION_SAMPLES, dataset, data_path)


def quantize_onnx(source: CheckpointSource, fp32_path: Path, target: Path,
                  calibration: torch.Tensor | None) -> QuantizeResult:
    """Quantize the fp32 ONNX export of ``source`` into ``target``: static when ``calibration`` inputs are
    given, else dynamic; then compare the two models on the test set. ``target`` appears only when done.

    Example: ``quantize_onnx(source, Path("out/teacher.onnx"), Path("out/teacher.int8.onnx"), inputs)``
    """
    test = source.data.test
    fp32_accuracy, fp32_predictions = session_accuracy(inference_session(fp32_path), test)
    measured: dict[str, float] = {}

    def write_and_measure(temporary: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            # Shape inference and graph optimisation first, as ONNX Runtime recommends before quantizing.
            prepared = Path(scratch) / "prepared.onnx"
            with quiet():
                quant_pre_process(str(fp32_path), str(prepared))
                if calibration is None:
                    quantize_dynamic(str(prepared), str(temporary), weight_type=QuantType.QInt8)
                else:
                    quantize_static(str(prepared), str(temporary), _Calibration(calibration),
                                    quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        measured["accuracy"], predictions = session_accuracy(inference_session(temporary), test)
        measured["agreement"] = float((predictions == fp32_predictions).mean())

    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, write_and_measure)
    return QuantizeResult(path=target, mode="dynamic" if calibration is None else "static",
                          fp32_accuracy=fp32_accuracy, int8_accuracy=measured["accuracy"],
                          agreement=measured["agreement"], fp32_size_bytes=fp32_path.stat().st_size,
                          int8_size_bytes=target.stat().st_size, samples=len(test),
                          calibration_samples=0 if calibration is None else len(calibration))


class _Calibration(CalibrationDataReader):
    """Feeds the calibration inputs to ONNX Runtime's calibrator in batches, as many times as it rewinds."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.batches = [{"inputs": batch.numpy().astype(np.float32, copy=False)}
                        for batch in inputs.split(_CALIBRATION_BATCH)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0
