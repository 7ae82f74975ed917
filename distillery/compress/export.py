"""Export a checkpoint's model to ONNX or torch.export's .pt2, verified against PyTorch on real test data."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection

import numpy as np
import torch
from torch import nn

from distillery.atomic import atomic_write
from distillery.compress.exported import ExportResult
from distillery.compress.huggingface_export import export_huggingface
from distillery.compress.quiet import first_line_of_cause, quiet
from distillery.compress.runtime import graph_parameters, predict_logits
from distillery.compress.source import CheckpointSource, load_source
from distillery.defaults import EXPORT_TOLERANCE
from distillery.errors import ConfigError, ModelError
from distillery.models.onnx_session import inference_session

DEFAULT_TOLERANCE = EXPORT_TOLERANCE
VERIFY_SAMPLES = 256
FORMATS = {"onnx": "ONNX", "pt2": "torch.export (.pt2)", "huggingface": "a Hugging Face folder"}


def export_model(checkpoint: str | Path, *, format: str = "onnx", output: str | Path | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, allow_factories: Collection[str] = (),
                 adapters: bool = False) -> ExportResult:
    """Export the model of a checkpoint of ours to ``format`` ("onnx", "pt2", or "huggingface": a folder that
    ``transformers`` loads, for language models and text classifiers, see
    :func:`~distillery.compress.huggingface_export.export_huggingface`) and verify it.

    The artifact's outputs on a batch of the checkpoint's own test set (in its recorded preprocessing)
    must match PyTorch's within ``tolerance`` (absolute, on logits), or a ModelError says by how much and
    nothing is written. The batch dimension stays dynamic. Default ``output``: beside the checkpoint,
    ``<run>/model.onnx`` or ``<run>/model.pt2``.

    Example::

        result = distillery.export_model("runs/distilled", format="onnx")
        print(result.path, result.max_abs_diff)
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ConfigError(f"tolerance must be a number >= 0 (absolute, on logits), got {tolerance!r}")
    if format == "huggingface":
        return export_huggingface(checkpoint, output, tolerance, allow_factories, adapters)
    if adapters:
        raise ConfigError("--adapters writes a LoRA run's adapters alone, with --format huggingface")
    source = load_source(checkpoint, allow_factories)
    target = Path(output) if output is not None else source.stem.with_suffix(f".{format}")
    return write_verified(source, format, target, tolerance)


def write_verified(source: CheckpointSource, format: str, target: Path, tolerance: float) -> ExportResult:
    """Export ``source``'s model to ``target`` via a temporary file that is renamed only once verified.

    Example: ``write_verified(load_source("runs/teacher"), "onnx", Path("out/teacher.onnx"), 1e-4)``
    """
    inputs = source.data.test.inputs[:VERIFY_SAMPLES]
    with torch.no_grad():
        expected = source.model(inputs).numpy()
    found: dict[str, float | int] = {}

    def write_and_verify(temporary: Path) -> None:
        WRITERS[format](source.model, inputs, temporary, source.stem)
        outputs, found["parameters"] = RUNNERS[format](temporary, inputs)
        found["difference"] = float(np.abs(outputs - expected).max())
        # Written so a NaN difference fails too.
        if not found["difference"] <= tolerance:
            raise ModelError(f"the {FORMATS[format]} export of {source.stem} differs from PyTorch by up to "
                             f"{found['difference']:.3g} on the logits of {len(inputs)} test samples, over the "
                             f"tolerance {tolerance:g}; nothing was written (a larger --tolerance accepts it)")

    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, write_and_verify)
    return ExportResult(path=target, format=format, max_abs_diff=found["difference"], tolerance=tolerance,
                        samples=len(inputs), parameters=int(found["parameters"]), size_bytes=target.stat().st_size)


def _batch_dimension(example: torch.Tensor) -> tuple[torch.Tensor, tuple[dict[int, torch.export.Dim]]]:
    # Two rows (the same one twice if there is only one): tracing with one would fix the batch size at 1.
    return example[[0, -1]], ({0: torch.export.Dim("batch")},)


def _exported(format: str, stem: Path, export: Callable[[], object]):
    """Run an exporter; a model it cannot capture becomes a ModelError naming the format and the cause."""
    try:
        with quiet():
            return export()
    except Exception as error:  # the exporters raise many types for one meaning: this forward cannot be captured
        raise ModelError(f"cannot export {stem} to {FORMATS[format]}: {first_line_of_cause(error)}; its forward "
                         "must be traceable by torch.export (no Python branches on tensor values)") from None


def _write_onnx(model: nn.Module, inputs: torch.Tensor, path: Path, stem: Path) -> None:
    example, dynamic_shapes = _batch_dimension(inputs)
    program = _exported("onnx", stem, lambda: torch.onnx.export(
        model, (example,), dynamo=True, verbose=False, dynamic_shapes=dynamic_shapes,
        input_names=["inputs"], output_names=["logits"]))
    # Per-node metadata holds source stack traces with local paths: most of a small model's file, no use deployed.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    with quiet():
        program.save(str(path), external_data=False)


def _write_pt2(model: nn.Module, inputs: torch.Tensor, path: Path, stem: Path) -> None:
    example, dynamic_shapes = _batch_dimension(inputs)
    program = _exported("pt2", stem, lambda: torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes))
    with quiet():
        torch.export.save(program, str(path))


def _run_onnx(path: Path, inputs: torch.Tensor) -> tuple[np.ndarray, int]:
    return predict_logits(inference_session(path), inputs), graph_parameters(path)


def _run_pt2(path: Path, inputs: torch.Tensor) -> tuple[np.ndarray, int]:
    with quiet():
        program = torch.export.load(str(path))
    parameters = sum(program.state_dict[name].numel() for name in program.graph_signature.parameters)
    with torch.no_grad():
        return program.module()(inputs).numpy(), parameters


WRITERS = {"onnx": _write_onnx, "pt2": _write_pt2}
RUNNERS = {"onnx": _run_onnx, "pt2": _run_pt2}
