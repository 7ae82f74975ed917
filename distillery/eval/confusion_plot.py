"""The report's confusion-matrix figure: one panel per run that recorded a confusion matrix."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from distillery.eval.per_class import class_names
from distillery.eval.plots import plt, save_figure
from distillery.eval.run_record import RunRecord

_MAX_ANNOTATED_CLASSES = 20  # beyond this, numbers in the cells are too small to read
_MAX_LABELLED_CLASSES = 40  # beyond this, tick labels overlap


def confusion_of(run: RunRecord) -> list[list[int]] | None:
    """The run's recorded confusion matrix (C x C counts, rows true class) when it is well formed, else None.

    Example: ``confusion_of(load_run("runs/kd"))[3][5]`` counts class 3 predicted as 5.
    """
    matrix = run.evaluation.get("confusion_matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    if not all(isinstance(row, list) and len(row) == len(matrix) for row in matrix):
        return None
    return matrix


def plot_confusion(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Confusion matrix per run that has one: rows true class, columns predicted class, classes named as in
    model.json. Each cell is coloured by its share of its row (0-1: the row's recall on the diagonal, so a
    class of 20 images reads like one of 2,000) and, for up to 20 classes, shows its count.

    Raises ValueError when no run recorded a confusion matrix.
    Example: ``plot_confusion([teacher, scratch, distilled], "out/confusion.png")``
    """
    drawn = [run for run in runs if confusion_of(run) is not None]
    if not drawn:
        raise ValueError("no run has a confusion matrix to plot")
    size = max(len(confusion_of(run)) for run in drawn)
    columns = min(3, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    panel = min(3.2 + 0.25 * size, 9.0)
    fig, axes = plt.subplots(rows, columns, figsize=(panel * columns, panel * rows + 0.6), layout="constrained",
                             squeeze=False)
    image = None
    for run, ax in zip(drawn, axes.flat):
        image = _draw_confusion(ax, run)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of the true class's test samples")
    return save_figure(fig, path)


def _draw_confusion(ax, run: RunRecord):
    matrix = confusion_of(run)
    names = class_names(run)
    if names is None or len(names) != len(matrix):
        names = [str(index) for index in range(len(matrix))]
    shares = [[count / sum(row) if sum(row) else 0.0 for count in row] for row in matrix]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if len(matrix) <= _MAX_ANNOTATED_CLASSES:
        for true, row in enumerate(matrix):
            for predicted, count in enumerate(row):
                dark = shares[true][predicted] > 0.6  # black would vanish on the deepest blue
                ax.text(predicted, true, f"{count}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    if len(matrix) <= _MAX_LABELLED_CLASSES:
        ax.set_xticks(range(len(names)), labels=names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), labels=names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(run.name, fontsize=10)
    return image
