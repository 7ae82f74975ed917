"""The tune's heat map: validation accuracy over a two-key grid."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.patches import Rectangle

from distillery.eval.plots import plt, save_figure


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
    return save_figure(fig, path)
