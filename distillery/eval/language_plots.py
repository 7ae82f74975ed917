"""Language-model report figures: learning curves with validation perplexity, and perplexity against size."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distillery.eval.plots import draw_loss_parts, label_axes, plt, run_colors, run_handles, save_figure, train_parts
from distillery.eval.run_record import RunRecord, is_number


def plot_language_curves(runs: Sequence[RunRecord], path: str | Path) -> Path:
    """Training loss parts (left) and validation perplexity on a log scale (right) per epoch, one colour per run."""
    colors = run_colors(runs)
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    parts = train_parts(runs)
    draw_loss_parts(loss_ax, runs, colors, parts)
    for run, color in zip(runs, colors):
        epochs = [row.get("epoch", index + 1) for index, row in enumerate(run.history)]
        points = [(epoch, row["val/perplexity"]) for epoch, row in zip(epochs, run.history)
                  if is_number(row.get("val/perplexity"))]
        if points:
            val_ax.plot(*zip(*points), color=color, marker="o", markersize=3)
    label_axes(loss_ax, "Training loss by part", "loss (epoch mean)")
    label_axes(val_ax, "Validation perplexity", "perplexity (log scale)")
    val_ax.set_yscale("log")
    fig.legend(handles=run_handles(runs, colors), title="run", loc="outside lower center",
               ncols=max(1, min(len(runs), 5)))
    return save_figure(fig, path)


def plot_perplexities(rows: Sequence[tuple[str, float, int | None]], path: str | Path) -> Path:
    """Test perplexity per model (bars, log scale) and against parameters: ``rows`` of (name, perplexity,
    parameters)."""
    fig, (bar_ax, size_ax) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    names = [name for name, _, _ in rows]
    colors = plt.get_cmap("tab10").colors
    bar_ax.bar(range(len(rows)), [value for _, value, _ in rows], color=[colors[i % 10] for i in range(len(rows))])
    bar_ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    bar_ax.set_yscale("log")
    bar_ax.set_title("Test perplexity (lower is better)")
    bar_ax.grid(alpha=0.3, axis="y")
    for index, (name, value, parameters) in enumerate(rows):
        bar_ax.text(index, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
        if parameters:
            size_ax.scatter(parameters, value, color=colors[index % 10], s=60, label=name)
    size_ax.set_xscale("log")
    size_ax.set_yscale("log")
    size_ax.set_xlabel("parameters")
    size_ax.set_ylabel("test perplexity")
    size_ax.set_title("Perplexity against size")
    size_ax.grid(alpha=0.3)
    if any(parameters for _, _, parameters in rows):
        size_ax.legend(fontsize=8)
    return save_figure(fig, path)
