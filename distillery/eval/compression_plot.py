"""Accuracy against latency for deployed models: the compression report's picture."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from distillery.eval.plots import MAX_MARKER_AREA, MIN_MARKER_AREA, annotate_points, plt, save_figure


def plot_compression(rows: Sequence[dict], path: str | Path) -> Path:
    """Accuracy against batch-1 latency (log scale) of deployed models, marker area ∝ size on disk.

    Each row names its ``model`` (one colour each) and ``precision`` (fp32 a circle, int8 a square) and
    gives ``accuracy`` (0-1), ``size_bytes`` and ``latency["batch1_median_ms"]``; every point is labelled.
    Example: ``plot_compression(report.rows, "out/compress.png")``
    """
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    palette = plt.get_cmap("tab10").colors
    models = list(dict.fromkeys(row["model"] for row in rows))
    largest = max((row["size_bytes"] for row in rows), default=0)
    labels = []
    for row in rows:
        area = max(MAX_MARKER_AREA * row["size_bytes"] / largest, MIN_MARKER_AREA) if largest else MIN_MARKER_AREA
        latency, accuracy = row["latency"]["batch1_median_ms"], 100 * row["accuracy"]
        ax.scatter(latency, accuracy, s=area, color=palette[models.index(row["model"]) % len(palette)],
                   marker="s" if row["precision"] == "int8" else "o", alpha=0.6, edgecolors="black")
        labels.append((f"{row['model']} {row['precision']}", latency, accuracy, math.sqrt(area) / 2))
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency in ONNX Runtime, median (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs batch-1 latency\n(marker area ∝ size on disk, largest {largest / 1024:,.1f} KiB; "
                 "circles fp32, squares int8)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.25, y=0.25)  # room for the largest marker at the edges of the data
    if labels:
        annotate_points(ax, labels)
    _plain_log_ticks(ax.xaxis, ax.get_xlim())
    return save_figure(fig, path)


def _plain_log_ticks(axis, limits: tuple[float, float]) -> None:
    """Tick labels such as 0.05 instead of 5×10⁻²; every minor tick labelled within a decade, fewer beyond."""
    decades = math.log10(limits[1] / limits[0])
    shown = range(1, 10) if decades < 1 else (2, 5) if decades < 3 else ()

    def minor(value: float, _position) -> str:
        leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if leading in shown else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))
