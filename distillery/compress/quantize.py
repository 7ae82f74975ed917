"""Int8 ONNX models with ONNX Runtime's quantization: dynamic for linear layers, static (calibrated) for convolutions."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from distillery.atomic import atomic_write
from distillery.compress.calibration import DEFAULT_CALIBRATION_SAMPLES, CalibrationData, calibration_inputs
from distillery.compress.export import DEFAULT_TOLERANCE, write_verified
from distillery.compress.quiet import quiet
from distillery.compress.runtime import session_accuracy
from distillery.compress.source import CheckpointSource, load_source
from distillery.errors import ConfigError
from distillery.models.onnx_session import inference_session

MODES = ("auto", "dynamic", "static")
# An int8 model that loses more test accuracy than this against its fp32 export is flagged.
MAX_ACCURACY_DROP_POINTS = 1.0
_CALIBRATION_BATCH = 64


@dataclass
class QuantizeResult:
    """The int8 model and what it cost: test accuracy (0-1) of the fp32 and int8 ONNX models, the share of
    test samples where their top-1 predictions agree, and both files' sizes on disk (bytes).

    ``warnings`` holds one line per thing to look at: calibration data on a somewhat different scale
    from the model's inputs, and an int8 accuracy more than :data:`MAX_ACCURACY_DROP_POINTS` below fp32's
    (then ``accuracy_drop_flagged`` is True).
    """

    path: Path
    mode: str
    fp32_accuracy: float
    int8_accuracy: float
    agreement: float
    fp32_size_bytes: int
    int8_size_bytes: int
    samples: int
    calibration_samples: int
    warnings: list[str] = field(default_factory=list)

    @property
    def accuracy_drop_points(self) -> float:
        """fp32 minus int8 test accuracy, in percentage points (negative when int8 does better)."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @property
    def accuracy_drop_flagged(self) -> bool:
        """Whether int8 loses more than :data:`MAX_ACCURACY_DROP_POINTS` points of accuracy against fp32."""
        return self.accuracy_drop_points > MAX_ACCURACY_DROP_POINTS


def quantize_model(checkpoint: str | Path, *, mode: str = "auto", calibration_samples: int | None = None,
                   calibration_dataset: str | None = None, calibration_path: str | None = None,
                   output: str | Path | None = None, allow_factories: Collection[str] = ()) -> QuantizeResult:
    """Quantize a checkpoint's model to an int8 ONNX model and measure it against the fp32 one.

    ``mode``: "dynamic" (int8 weights, activations quantized on the fly: no calibration; for linear
    layers), "static" (QDQ, per-channel int8 weights, activation ranges calibrated on
    ``calibration_samples`` training inputs, default 512: convolutions run in int8 end to end), or "auto":
    static when the model has convolutions, else dynamic. The calibration inputs come from the checkpoint's
    own training split, or from ``calibration_dataset`` / ``calibration_path``, preprocessed as the
    checkpoint records. Default ``output``: ``<run>/model.int8.onnx``.

    Calibration inputs clearly on another scale than the model's (DataError, nothing written) are refused,
    somewhat off ones warned about, and an int8 accuracy more than :data:`MAX_ACCURACY_DROP_POINTS` below
    fp32's is flagged: both in ``result.warnings`` (the rule:
    :func:`distillery.compress.calibration.check_calibration_range`).
    Raises ConfigError for an unknown mode or calibration options that do not apply.

    Example::

        result = distillery.quantize_model("runs/teacher", mode="auto")
        print(result.mode, result.fp32_accuracy, result.int8_accuracy, result.int8_size_bytes)
        for warning in result.warnings:
            print("warning:", warning)
    """
    if mode not in MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(MODES)}")
    source = load_source(checkpoint, allow_factories)
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
                     dataset: str | None, data_path: str | None) -> CalibrationData | None:
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
                  calibration: CalibrationData | torch.Tensor | None) -> QuantizeResult:
    """Quantize the fp32 ONNX export of ``source`` into ``target``: static when ``calibration`` inputs are
    given (a tensor [N, *input_shape] in the model's preprocessing is taken as is), else dynamic; then compare
    the two models on the test set. ``target`` appears only when done.

    Example: ``quantize_onnx(source, Path("out/teacher.onnx"), Path("out/teacher.int8.onnx"), calibration)``
    """
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationData(calibration)
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
                    quantize_static(str(prepared), str(temporary), _Calibration(calibration.inputs),
                                    quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        measured["accuracy"], predictions = session_accuracy(inference_session(temporary), test)
        measured["agreement"] = float((predictions == fp32_predictions).mean())

    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, write_and_measure)
    result = QuantizeResult(path=target, mode="dynamic" if calibration is None else "static",
                            fp32_accuracy=fp32_accuracy, int8_accuracy=measured["accuracy"],
                            agreement=measured["agreement"], fp32_size_bytes=fp32_path.stat().st_size,
                            int8_size_bytes=target.stat().st_size, samples=len(test),
                            calibration_samples=0 if calibration is None else len(calibration.inputs))
    if calibration is not None and calibration.warning:
        result.warnings.append(calibration.warning)
    if result.accuracy_drop_flagged:
        result.warnings.append(accuracy_drop_warning(result))
    return result


def accuracy_drop_warning(result: QuantizeResult) -> str:
    """One line saying how much accuracy int8 lost against fp32 and what to look at.

    Example: ``accuracy_drop_warning(result)`` -> ``"int8 accuracy 18.60% is 81.40 points below fp32's ..."``
    """
    if result.mode == "static":
        advice = ("check that the calibration data is preprocessed like the model's inputs, calibrate on more "
                  "samples, or keep fp32")
    else:
        advice = "this model's weights do not survive int8 well; keep fp32 or try --mode static"
    return (f"int8 accuracy {result.int8_accuracy:.2%} is {result.accuracy_drop_points:.2f} points below fp32's "
            f"{result.fp32_accuracy:.2%} on {result.samples:,} test samples (more than "
            f"{MAX_ACCURACY_DROP_POINTS:g} point): {advice}")


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
