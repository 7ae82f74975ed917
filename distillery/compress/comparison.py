"""The distillation-versus-quantization comparison: five deployed models measured alike in ONNX Runtime."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import onnxruntime

from distillery.atomic import atomic_write_text
from distillery.compress.calibration import DEFAULT_CALIBRATION_SAMPLES, calibration_inputs
from distillery.compress.export import DEFAULT_TOLERANCE, write_verified
from distillery.compress.quantize import choose_mode, quantize_onnx
from distillery.compress.runtime import session_accuracy, session_latency
from distillery.compress.source import CheckpointSource, load_source
from distillery.errors import DataError
from distillery.eval.compression_plot import plot_compression
from distillery.eval.latency import unstable_reason
from distillery.models.onnx_session import inference_session
from distillery.output_dir import claim_output_dir

QUANTIZED_ROLES = ("teacher", "distilled")
_COLUMNS = ["model", "precision", "accuracy", "size on disk", "batch-1 median (ms)", "batch-1 p95 (ms)",
            "batch-256 (samples/s)"]


@dataclass
class CompressReport:
    """The measured rows (teacher fp32, teacher int8, scratch fp32, distilled fp32, distilled int8), the
    Markdown table, and the paths of compress_report.md, compress_report.json and compress.png."""

    rows: list[dict[str, Any]]
    table: str
    markdown: Path
    json: Path
    plot: Path


def compress_report(teacher: str | Path, scratch: str | Path, distilled: str | Path,
                    output_dir: str | Path = "compress-report", *, threads: int | None = None,
                    allow_factories: Collection[str] = ()) -> CompressReport:
    """Export the three checkpoints to ONNX, quantize the teacher and the distilled student to int8, and
    measure all five in ONNX Runtime on the same test set and machine: accuracy, size on disk, batch-1
    latency (median, p95) and batch-256 throughput. Artifacts and the report go to ``output_dir``; the
    run directories are only read. ``threads``: ONNX Runtime's intra-op threads (default: torch's).
    A latency whose own spread makes it unstable is marked so and left out of every latency ratio; an int8
    row's ``warnings`` flag a large accuracy drop against fp32. Raises DataError when the three
    checkpoints are not tested on the same samples.

    Example::

        report = distillery.compress_report("runs/teacher", "runs/scratch", "runs/distilled", "compress-out")
        print(report.table)
    """
    sources = {role: load_source(path, allow_factories)
               for role, path in (("teacher", teacher), ("scratch", scratch), ("distilled", distilled))}
    _check_same_test_set(sources)
    output_dir = claim_output_dir(output_dir, ".distillery-compress-report", "compress report")
    rows = []
    for role, source in sources.items():
        fp32 = write_verified(source, "onnx", output_dir / f"{role}.onnx", DEFAULT_TOLERANCE)
        rows.append(_measure(role, "fp32", source, fp32.path, threads))
        if role in QUANTIZED_ROLES:
            mode = choose_mode(source.model)
            calibration = calibration_inputs(source, DEFAULT_CALIBRATION_SAMPLES) if mode == "static" else None
            int8 = quantize_onnx(source, fp32.path, output_dir / f"{role}.int8.onnx", calibration)
            rows.append({**_measure(role, "int8", source, int8.path, threads, quantization=int8.mode,
                                    calibration_samples=int8.calibration_samples), "warnings": int8.warnings})
    test = sources["distilled"].data.test
    document = {"dataset": test.source, "samples": len(test), "runtime": f"onnxruntime {onnxruntime.__version__}",
                "threads": rows[0]["latency"]["threads"], "cpu": rows[0]["latency"]["cpu"],
                "checkpoints": {role: str(source.stem) for role, source in sources.items()}, "rows": rows}
    table = comparison_table(rows)
    return CompressReport(
        rows=rows, table=table,
        markdown=atomic_write_text(output_dir / "compress_report.md", _markdown(document, table)),
        json=atomic_write_text(output_dir / "compress_report.json", json.dumps(document, indent=2)),
        plot=plot_compression(rows, output_dir / "compress.png"))


def _check_same_test_set(sources: dict[str, CheckpointSource]) -> None:
    # Each model keeps its own preprocessing; the raw test samples behind it must be the same ones.
    reference_role, reference = "distilled", sources["distilled"].data.test
    for role, source in sources.items():
        test = source.data.test
        if test.class_names != reference.class_names or not test.labels.equal(reference.labels):
            raise DataError(f"the {role} {source.stem} is tested on {test.source} ({len(test)} samples, classes "
                            f"{', '.join(test.class_names)}) but the {reference_role} on {reference.source} "
                            f"({len(reference)} samples); compare models trained on the same data")


def _measure(role: str, precision: str, source: CheckpointSource, path: Path, threads: int | None,
             quantization: str | None = None, calibration_samples: int = 0) -> dict[str, Any]:
    session = inference_session(path, threads)
    accuracy, _ = session_accuracy(session, source.data.test)
    return {"model": role, "precision": precision, "quantization": quantization,
            "calibration_samples": calibration_samples, "file": path.name, "accuracy": accuracy,
            "size_bytes": path.stat().st_size, "parameters": source.metadata.get("parameters"),
            "latency": session_latency(session, source.input_shape)}


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, one line per deployed model.

    Example: ``print(comparison_table(report.rows))``
    """
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        latency = row["latency"]
        precision = row["precision"] + (f" ({row['quantization']})" if row["quantization"] else "")
        unstable = " (unstable)" if unstable_reason(latency) else ""
        cells = [row["model"], precision, f"{100 * row['accuracy']:.2f}%", f"{row['size_bytes'] / 1024:,.1f} KiB",
                 f"{latency['batch1_median_ms']:.3f}{unstable}", f"{latency['batch1_p95_ms']:.3f}",
                 f"{latency['batch256_samples_per_s']:,.0f}{unstable}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(document: dict[str, Any], table: str) -> str:
    rows = {(row["model"], row["precision"]): row for row in document["rows"]}
    baseline = rows[("teacher", "fp32")]
    against = [("quantization alone", rows[("teacher", "int8")]), ("distillation alone", rows[("distilled", "fp32")]),
               ("both", rows[("distilled", "int8")])]
    lines = [f"- {label} ({row['model']} {row['precision']}): {_against_teacher(row, baseline)}" for label, row in against]
    gain = 100 * (rows[("distilled", "fp32")]["accuracy"] - rows[("scratch", "fp32")]["accuracy"])
    lines.append(f"- distillation over the same student trained from scratch: {gain:+.2f} points of accuracy")
    lines += _notes(document["rows"])
    checkpoints = ", ".join(f"{role} `{path}`" for role, path in document["checkpoints"].items())
    return "\n".join([
        "# Distillation versus quantization", "",
        f"Every model exported to ONNX and run in {document['runtime']} on this machine's CPU "
        f"({document['cpu']}, {document['threads']} threads), on the same {document['samples']:,} test samples "
        f"({document['dataset']}). "
        "int8: dynamic quantization (int8 weights, activations quantized on the fly) for models of linear layers, "
        "static (QDQ, per-channel int8 weights, activation ranges calibrated on training samples) for models with "
        "convolutions.", "",
        table, "Against the teacher in fp32:", "", *lines, "",
        "![accuracy against batch-1 latency, marker area by size on disk](compress.png)", "",
        f"Checkpoints: {checkpoints}.", ""])


def _against_teacher(row: dict[str, Any], teacher: dict[str, Any]) -> str:
    size = row["size_bytes"] / teacher["size_bytes"]
    accuracy = 100 * (row["accuracy"] - teacher["accuracy"])
    if unstable_reason(row["latency"]) or unstable_reason(teacher["latency"]):
        latency = "batch-1 latency not compared (a measurement was unstable)"
    else:
        latency = f"batch-1 latency {row['latency']['batch1_median_ms'] / teacher['latency']['batch1_median_ms']:.2f}×"
    return f"size {size:.2f}×, {latency}, accuracy {accuracy:+.2f} points"


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    """A line per unstable latency measurement and per int8 warning (calibration scale, accuracy drop)."""
    notes = []
    for row in rows:
        name = f"{row['model']} {row['precision']}"
        if reason := unstable_reason(row["latency"]):
            notes.append(f"- {name}: latency measurement unstable ({reason}); measure again on a quiet machine")
        notes += [f"- {name}: warning: {warning}" for warning in row.get("warnings", [])]
    return notes
