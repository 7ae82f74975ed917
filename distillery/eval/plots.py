"""Report figures: learning curves, model comparison, reliability diagrams.

Each function draws one figure from finished runs, writes it as a PNG (atomically) and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

# Reports are written on headless machines and from worker processes; never pick an interactive backend.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from distillery.atomic import atomic_write  # noqa: E402
from distillery.eval.latency import unstable_reason  # noqa: E402
from distillery.eval.run_record import RunRecord, is_number, nested  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LINE_STYLES = ["-", "--", ":", "-."]
MAX_MARKER_AREA = 1200.0  # pt², given to the largest model in the scatter
MIN_MARKER_AREA = 25.0  # keeps a tiny student visible next to a huge teacher
_DPI = 120
_LABEL_HEIGHT = 12.0  # pt, one line of 9-pt text with spacing
_LABEL_CHAR_WIDTH = 5.4  # pt, a rough average for 9-pt sans-serif
_MIN_BAR_ALPHA, _MAX_BAR_ALPHA = 0.12, 0.85  # a reliability bar of one sample, and of the fullest bin


def plot_learning_curves(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Training loss parts (left) and validation accuracy (right) per epoch, one colour per run.

    Example: ``plot_learning_curves([load_run("runs/kd")], "out/learning_curves.png")``
    """
    colors = run_colors(runs)
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    parts = train_parts(runs)
    draw_loss_parts(loss_ax, runs, colors, parts)
    for run, color in zip(runs, colors):
        epochs = [row.get("epoch", index + 1) for index, row in enumerate(run.history)]
        points = [
            (epoch, 100 * row["val/accuracy"])
            for epoch, row in zip(epochs, run.history)
            if is_number(row.get("val/accuracy"))
        ]
        if points:
            val_ax.plot(*zip(*points), color=color, marker="o", markersize=3)
    label_axes(loss_ax, "Training loss by part", "loss (epoch mean)")
    label_axes(val_ax, "Validation accuracy", "accuracy (%)")
    if not parts:
        _say_empty(loss_ax, "no train/… metrics logged")
    if not any(is_number(row.get("val/accuracy")) for run in runs for row in run.history):
        _say_empty(val_ax, "no val/accuracy logged")
    # Legends sit outside the axes so they never hide a curve: colours name runs, line styles name loss parts.
    style_handles = [
        Line2D([], [], color="black", linestyle=style, label=part.removeprefix("train/"))
        for part, style in zip(parts, cycle(LINE_STYLES, len(parts)))
    ]
    if style_handles:
        loss_ax.legend(handles=style_handles, title="loss part", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.legend(handles=run_handles(runs, colors), title="run", loc="outside lower center", ncols=max(1, min(len(runs), 5)))
    return save_figure(fig, path)


def plot_comparison(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Test accuracy per run (bars) beside accuracy vs batch-1 latency (marker area ∝ parameters).

    Example: ``plot_comparison([teacher, student], "out/comparison.png")``
    """
    colors = run_colors(runs)
    fig, (bar_ax, scatter_ax) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    accuracies = [_accuracy_percent(run) for run in runs]
    positions = range(len(runs))
    bars = bar_ax.bar(positions, [value or 0.0 for value in accuracies], color=colors)
    bar_ax.bar_label(bars, labels=[f"{value:.2f}%" if value is not None else "–" for value in accuracies], padding=2)
    # Many or long names overlap side by side; slanted, anchored at their right end, they stay under their bar.
    slanted = len(runs) > 3 or any(len(run.name) > 14 for run in runs)
    bar_ax.set_xticks(
        list(positions), [run.name for run in runs], rotation=30 if slanted else 0,
        ha="right" if slanted else "center", rotation_mode="anchor",
    )
    # Headroom so the value labels above full-height bars stay inside the axes.
    bar_ax.set_ylim(0, 110)
    bar_ax.set_yticks(range(0, 101, 20))
    bar_ax.set_ylabel("test accuracy (%)")
    bar_ax.set_title("Test accuracy")
    bar_ax.grid(axis="y", alpha=0.3)
    _draw_latency_scatter(scatter_ax, runs, colors, accuracies)
    return save_figure(fig, path)


def plot_reliability(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Reliability diagram per run: accuracy per confidence bin against the diagonal, ECE in the title.

    Example: ``plot_reliability(runs, "out/reliability.png")``
    """
    columns = max(1, min(4, len(runs)))
    rows = max(1, math.ceil(len(runs) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 3.4 * rows + 0.4), layout="constrained", squeeze=False
    )
    flat_axes = list(axes.flat)
    for run, color, ax in zip(runs, run_colors(runs), flat_axes):
        _draw_reliability(ax, run, color)
    for ax in flat_axes[len(runs):]:
        ax.set_visible(False)
    # One legend for all panels, below them, so it never sits on a bar.
    legend_handles = [
        Patch(facecolor="lightgray", edgecolor="black",
              label="accuracy of the samples in a confidence bin (number and opacity: how many)"),
        Line2D([], [], linestyle="--", color="gray", label="perfect calibration"),
    ]
    fig.legend(handles=legend_handles, loc="outside lower center", ncols=2, fontsize=9)
    return save_figure(fig, path)


def _draw_latency_scatter(ax, runs, colors, accuracies) -> None:
    latencies = [nested(run.evaluation, "latency", "batch1_median_ms") for run in runs]
    parameters = [_parameters(run) for run in runs]
    largest = max((count for count in parameters if count), default=0)
    labels = []
    for run, color, accuracy, latency, count in zip(runs, colors, accuracies, latencies, parameters):
        if accuracy is None or not is_number(latency):
            continue
        area = MAX_MARKER_AREA * count / largest if count and largest else MIN_MARKER_AREA
        ax.scatter(latency, accuracy, s=max(area, MIN_MARKER_AREA), color=color, alpha=0.6, edgecolors="black")
        unstable = " (unstable timing)" if unstable_reason(run.evaluation.get("latency")) else ""
        labels.append((run.name + unstable, latency, accuracy, math.sqrt(max(area, MIN_MARKER_AREA)) / 2))
    ax.set_xlabel("batch-1 latency, median (ms)")
    ax.set_ylabel("test accuracy (%)")
    size_note = f", largest {_short_count(largest)}" if largest else ""
    ax.set_title(f"Accuracy vs batch-1 latency\n(marker area ∝ parameters{size_note})", fontsize=11)
    ax.grid(alpha=0.3)
    if not labels:
        _say_empty(ax, "no latency measured")
        return
    # Room for the largest marker at the edges of the data, but no negative latencies.
    ax.margins(x=0.25, y=0.25)
    ax.set_xlim(left=max(0.0, ax.get_xlim()[0]))
    annotate_points(ax, labels)


def annotate_points(ax, labels: list[tuple[str, float, float, float]]) -> None:
    """Label each (text, x, y, marker radius in pt), moving a label up until it clears markers and other labels.

    Students of one size tend to sit close together, and their names would otherwise print on top of each other.
    """
    ax.figure.draw_without_rendering()  # settles the layout, so data→points below matches the saved image
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    to_points = 72 / ax.figure.dpi
    axes_right = ax.get_window_extent().x1 * to_points
    anchors = [tuple(value * to_points for value in ax.transData.transform((x, y))) for _, x, y, _ in labels]
    # Boxes as (left, right, bottom, top) in points; markers are obstacles from the start.
    taken = [(px - r, px + r, py - r, py + r) for (px, py), (*_, r) in zip(anchors, labels)]
    for (text, x, y, radius), (anchor_x, anchor_y) in sorted(zip(labels, anchors), key=lambda item: item[1][1]):
        width = _LABEL_CHAR_WIDTH * len(text)
        # Right of the marker unless that runs past the axes' right edge.
        side = 1 if anchor_x + radius + 4 + width < axes_right else -1
        left = anchor_x + radius + 4 if side > 0 else anchor_x - radius - 4 - width
        bottom = anchor_y - _LABEL_HEIGHT / 2
        for box in sorted(taken, key=lambda box: box[2]):
            if left < box[1] and box[0] < left + width and bottom < box[3] and box[2] < bottom + _LABEL_HEIGHT:
                bottom = box[3]
        taken.append((left, left + width, bottom, bottom + _LABEL_HEIGHT))
        moved = bottom > anchor_y - _LABEL_HEIGHT / 2
        ax.annotate(
            text, (x, y), xytext=(side * (radius + 4), bottom + _LABEL_HEIGHT / 2 - anchor_y),
            textcoords="offset points", ha="left" if side > 0 else "right", va="center", fontsize=9,
            arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.6} if moved else None,
        )


def _draw_reliability(ax, run: RunRecord, color) -> None:
    """One panel; each bar's opacity grows with the square root of its bin's sample count, which is written on it.

    A bin of 2 samples says little about calibration; drawn as solid as one of 300 it would read as evidence.
    """
    reliability = run.evaluation.get("reliability") or {}
    edges = reliability.get("bin_edges") or []
    accuracy = reliability.get("accuracy") or []
    counts = reliability.get("count") or []
    bars = []
    for index, (bin_accuracy, count) in enumerate(zip(accuracy, counts)):
        # Empty bins carry no evidence; drawing them as zero-height bars would look like total miscalibration.
        if not is_number(count) or count <= 0 or bin_accuracy is None or index + 1 >= len(edges):
            continue
        bars.append((edges[index], edges[index + 1] - edges[index], bin_accuracy, int(count)))
    largest = max((count for *_, count in bars), default=1)
    for left, width, height, count in bars:
        ax.bar(left, height, width=width, align="edge", color=color, edgecolor="black", linewidth=0.6,
               alpha=_MIN_BAR_ALPHA + (_MAX_BAR_ALPHA - _MIN_BAR_ALPHA) * math.sqrt(count / largest))
        ax.text(left + width / 2, 0.015, f"{count:,}", rotation=90, ha="center", va="bottom", fontsize=6)
    heights = [height for _, _, height, _ in bars]
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_box_aspect(1)
    ece = run.evaluation.get("ece")
    ece_text = f"ECE {ece:.3f}" if is_number(ece) else "ECE –"
    ax.set_title(f"{run.name}\n{ece_text}", fontsize=10)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    if not heights:
        _say_empty(ax, "no reliability data")


def draw_loss_parts(ax, runs: Sequence[RunRecord], colors: list, parts: list[str]) -> None:
    """Each run's training loss parts per epoch on ``ax``: one colour per run, one line style per part."""
    for run, color in zip(runs, colors):
        epochs = [row.get("epoch", index + 1) for index, row in enumerate(run.history)]
        for part, style in zip(parts, cycle(LINE_STYLES, len(parts))):
            points = [(epoch, row[part]) for epoch, row in zip(epochs, run.history) if is_number(row.get(part))]
            if points:
                ax.plot(*zip(*points), linestyle=style, color=color, marker="o", markersize=3)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure via a temporary file so a crash never leaves a truncated PNG behind."""
    try:
        return atomic_write(path, lambda temporary: fig.savefig(temporary, format="png", dpi=_DPI))
    finally:
        plt.close(fig)


def train_parts(runs: Sequence[RunRecord]) -> list[str]:
    """Every ``train/…`` loss key in order of first appearance, the total loss first (speeds are not losses)."""
    parts: list[str] = []
    for run in runs:
        for row in run.history:
            parts.extend(key for key in row if key.startswith("train/") and key not in parts
                         and key != "train/tokens_per_s")
    return sorted(parts, key=lambda part: part != "train/loss")


def run_colors(runs: Sequence[RunRecord]) -> list:
    palette = plt.get_cmap("tab10").colors
    return [palette[index % len(palette)] for index in range(len(runs))]


def run_handles(runs, colors) -> list[Line2D]:
    return [Line2D([], [], color=color, marker="o", label=run.name) for run, color in zip(runs, colors)]


def label_axes(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _say_empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="gray")


def cycle(items: list, length: int) -> list:
    return [items[index % len(items)] for index in range(length)]


def _accuracy_percent(run: RunRecord) -> float | None:
    accuracy = run.evaluation.get("accuracy")
    return 100 * accuracy if is_number(accuracy) else None


def _parameters(run: RunRecord) -> int | None:
    count = run.evaluation.get("parameters", run.metadata.get("parameters"))
    return int(count) if is_number(count) else None


def _short_count(count: int) -> str:
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= threshold:
            return f"{count / threshold:.1f}{suffix}"
    return str(count)
