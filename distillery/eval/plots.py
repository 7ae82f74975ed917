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
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from distillery.atomic import atomic_write  # noqa: E402
from distillery.eval.latency import unstable_reason  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from distillery.eval.report import RunRecord

_LINE_STYLES = ["-", "--", ":", "-."]
_MAX_MARKER_AREA = 1200.0  # pt², given to the largest model in the scatter
_MIN_MARKER_AREA = 25.0  # keeps a tiny student visible next to a huge teacher
_DPI = 120
_LABEL_HEIGHT = 12.0  # pt, one line of 9-pt text with spacing
_LABEL_CHAR_WIDTH = 5.4  # pt, a rough average for 9-pt sans-serif
_MIN_BAR_ALPHA, _MAX_BAR_ALPHA = 0.12, 0.85  # a reliability bar of one sample, and of the fullest bin


def plot_learning_curves(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Training loss parts (left) and validation accuracy (right) per epoch, one colour per run.

    Example: ``plot_learning_curves([load_run("runs/kd")], "out/learning_curves.png")``
    """
    colors = _run_colors(runs)
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    parts = _train_parts(runs)
    for run, color in zip(runs, colors):
        epochs = [row.get("epoch", index + 1) for index, row in enumerate(run.history)]
        for part, style in zip(parts, _cycle(_LINE_STYLES, len(parts))):
            points = [(epoch, row[part]) for epoch, row in zip(epochs, run.history) if _is_number(row.get(part))]
            if points:
                loss_ax.plot(*zip(*points), linestyle=style, color=color, marker="o", markersize=3)
        points = [
            (epoch, 100 * row["val/accuracy"])
            for epoch, row in zip(epochs, run.history)
            if _is_number(row.get("val/accuracy"))
        ]
        if points:
            val_ax.plot(*zip(*points), color=color, marker="o", markersize=3)
    _label_axes(loss_ax, "Training loss by part", "loss (epoch mean)")
    _label_axes(val_ax, "Validation accuracy", "accuracy (%)")
    if not parts:
        _say_empty(loss_ax, "no train/… metrics logged")
    if not any(_is_number(row.get("val/accuracy")) for run in runs for row in run.history):
        _say_empty(val_ax, "no val/accuracy logged")
    # Legends sit outside the axes so they never hide a curve: colours name runs, line styles name loss parts.
    style_handles = [
        Line2D([], [], color="black", linestyle=style, label=part.removeprefix("train/"))
        for part, style in zip(parts, _cycle(_LINE_STYLES, len(parts)))
    ]
    if style_handles:
        loss_ax.legend(handles=style_handles, title="loss part", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.legend(handles=_run_handles(runs, colors), title="run", loc="outside lower center", ncols=max(1, min(len(runs), 5)))
    return _save(fig, path)


def plot_comparison(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Test accuracy per run (bars) beside accuracy vs batch-1 latency (marker area ∝ parameters).

    Example: ``plot_comparison([teacher, student], "out/comparison.png")``
    """
    colors = _run_colors(runs)
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
    return _save(fig, path)


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
    for run, color, ax in zip(runs, _run_colors(runs), flat_axes):
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
    return _save(fig, path)


def _draw_latency_scatter(ax, runs, colors, accuracies) -> None:
    latencies = [_nested(run.evaluation, "latency", "batch1_median_ms") for run in runs]
    parameters = [_parameters(run) for run in runs]
    largest = max((count for count in parameters if count), default=0)
    labels = []
    for run, color, accuracy, latency, count in zip(runs, colors, accuracies, latencies, parameters):
        if accuracy is None or not _is_number(latency):
            continue
        area = _MAX_MARKER_AREA * count / largest if count and largest else _MIN_MARKER_AREA
        ax.scatter(latency, accuracy, s=max(area, _MIN_MARKER_AREA), color=color, alpha=0.6, edgecolors="black")
        unstable = " (unstable timing)" if unstable_reason(run.evaluation.get("latency")) else ""
        labels.append((run.name + unstable, latency, accuracy, math.sqrt(max(area, _MIN_MARKER_AREA)) / 2))
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
    _annotate_points(ax, labels)


def _annotate_points(ax, labels: list[tuple[str, float, float, float]]) -> None:
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
        if not _is_number(count) or count <= 0 or bin_accuracy is None or index + 1 >= len(edges):
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
    ece_text = f"ECE {ece:.3f}" if _is_number(ece) else "ECE –"
    ax.set_title(f"{run.name}\n{ece_text}", fontsize=10)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    if not heights:
        _say_empty(ax, "no reliability data")


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure via a temporary file so a crash never leaves a truncated PNG behind."""
    try:
        return atomic_write(path, lambda temporary: fig.savefig(temporary, format="png", dpi=_DPI))
    finally:
        plt.close(fig)


def _train_parts(runs: Sequence[RunRecord]) -> list[str]:
    """Every ``train/…`` key in order of first appearance, the total loss first."""
    parts: list[str] = []
    for run in runs:
        for row in run.history:
            parts.extend(key for key in row if key.startswith("train/") and key not in parts)
    return sorted(parts, key=lambda part: part != "train/loss")


def _run_colors(runs: Sequence[RunRecord]) -> list:
    palette = plt.get_cmap("tab10").colors
    return [palette[index % len(palette)] for index in range(len(runs))]


def _run_handles(runs, colors) -> list[Line2D]:
    return [Line2D([], [], color=color, marker="o", label=run.name) for run, color in zip(runs, colors)]


def _label_axes(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _say_empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="gray")


def _cycle(items: list, length: int) -> list:
    return [items[index % len(items)] for index in range(length)]


def _accuracy_percent(run: RunRecord) -> float | None:
    accuracy = run.evaluation.get("accuracy")
    return 100 * accuracy if _is_number(accuracy) else None


def _parameters(run: RunRecord) -> int | None:
    count = run.evaluation.get("parameters", run.metadata.get("parameters"))
    return int(count) if _is_number(count) else None


def _short_count(count: int) -> str:
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= threshold:
            return f"{count / threshold:.1f}{suffix}"
    return str(count)


def _nested(mapping: dict, *keys: str):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        area = max(_MAX_MARKER_AREA * row["size_bytes"] / largest, _MIN_MARKER_AREA) if largest else _MIN_MARKER_AREA
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
        _annotate_points(ax, labels)
    _plain_log_ticks(ax.xaxis, ax.get_xlim())
    return _save(fig, path)


def _plain_log_ticks(axis, limits: tuple[float, float]) -> None:
    """Tick labels such as 0.05 instead of 5×10⁻²; every minor tick labelled within a decade, fewer beyond."""
    decades = math.log10(limits[1] / limits[0])
    shown = range(1, 10) if decades < 1 else (2, 5) if decades < 3 else ()

    def minor(value: float, _position) -> str:
        leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if leading in shown else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def plot_tune_heatmap(accuracy: Sequence[Sequence[float]], row_labels: Sequence[str], column_labels: Sequence[str],
                      axis_names: Sequence[str], scratch_accuracy: float, best: tuple[int, int],
                      path: str | Path) -> Path:
    """Validation accuracy (0-1) of a two-key tune grid, one cell per point, the best outlined.

    Cells are coloured by their difference from the student from scratch (red: worse, blue: better),
    so whether distillation pays shows at a glance.
    Example: ``plot_tune_heatmap([[0.9, 0.92]], ["2"], ["0.1", "0.5"], ["T", "alpha"], 0.91, (0, 1), "tune.png")``
    """
    gains = [[100 * (value - scratch_accuracy) for value in row] for row in accuracy]
    spread = max((abs(gain) for row in gains for gain in row), default=0.0) or 1.0
    fig, ax = plt.subplots(figsize=(1.1 * len(column_labels) + 2.8, 0.7 * len(row_labels) + 2.0),
                           layout="constrained")
    image = ax.imshow(gains, cmap="RdBu", vmin=-spread, vmax=spread, aspect="auto")
    for row, values in enumerate(accuracy):
        for column, value in enumerate(values):
            dark = abs(gains[row][column]) > 0.6 * spread  # black text would vanish in the deepest colours
            ax.text(column, row, f"{100 * value:.1f}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black", fontweight="bold" if (row, column) == best else "normal")
    ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
    ax.set_xticks(range(len(column_labels)), labels=column_labels)
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    ax.set_xlabel(axis_names[1])
    ax.set_ylabel(axis_names[0])
    ax.set_title(f"Validation accuracy (%), best outlined\nfrom scratch: {100 * scratch_accuracy:.1f}%", fontsize=11)
    fig.colorbar(image, ax=ax, label="percentage points vs scratch")
    return _save(fig, path)
