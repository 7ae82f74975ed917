"""The Markdown section and plots of benchmarks/suite.py, from its suite.json."""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def heat_map(result: dict, path: Path) -> Path:
    temperatures = sorted({float(key.split(",")[0]) for key in result["sweep"]})
    alphas = sorted({float(key.split(",")[1]) for key in result["sweep"]})
    grid = [[result["sweep"][f"{t:g},{a:g}"] * 100 for a in alphas] for t in temperatures]
    scratch_row = result["rows"].get("MLP 128 | from scratch")
    # Without the scratch row (a sweep run alone) the colours centre on the grid's median.
    scratch = scratch_row["accuracy"] * 100 if scratch_row else statistics.median(v for row in grid for v in row)
    reference = f"scratch ({scratch:.2f}%)" if scratch_row else f"the grid's median ({scratch:.2f}%)"
    fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
    spread = max(abs(value - scratch) for row in grid for value in row) or 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=scratch - spread, vmax=scratch + spread)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
    ax.set_xlabel("alpha (weight of the hard-label term)")
    ax.set_ylabel("temperature T")
    ax.set_title(f"Hinton KD, MLP 128 student: test accuracy (%)\nblue: above {reference}, red: below")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def method_bars(result: dict, path: Path) -> Path:
    students = list(dict.fromkeys(row["student"] for row in result["rows"].values()))
    fig, axes = plt.subplots(1, len(students), figsize=(6 * len(students), 4.6), layout="constrained", squeeze=False)
    teacher = result["teacher"]["accuracy"] * 100
    for ax, student in zip(axes[0], students):
        rows = [row for row in result["rows"].values() if row["student"] == student]
        values = [row["accuracy"] * 100 for row in rows]
        errors = [row["std"] * 100 for row in rows]
        colors = ["#999999" if row["method"] == "from scratch" else "#3b75af" for row in rows]
        ax.barh(range(len(rows)), values, xerr=errors, color=colors)
        ax.set_yticks(range(len(rows)), [row["method"] for row in rows], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(teacher, color="#c44e52", linestyle="--", label=f"teacher {teacher:.2f}%")
        ax.axvline(values[0], color="#555555", linestyle=":", label=f"scratch {values[0]:.2f}%")
        low = min(v - e for v, e in zip(values, errors))
        ax.set_xlim(low - 1.0, teacher + 0.5)
        ax.set_xlabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{student}: {rows[0]['parameters']:,} parameters, {rows[0]['epochs']} epochs")
        ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _accuracy(row: dict, seeds: int) -> str:
    if len(row["values"]) == 1:
        return f"{row['accuracy']:.2%} (1 seed)"
    short = f" ({len(row['values'])} seeds)" if len(row["values"]) < seeds else ""
    return f"{row['accuracy']:.2%} ± {row['std']:.2%}{short}"


def _versus_scratch(row: dict) -> str:
    """``+0.38 (-0.5 to +1.3): within noise`` for a row with a scratch reference, else a dash."""
    versus = row.get("vs_scratch")
    if versus is None:
        return "–"
    verdict = "within noise" if versus["within_noise"] else "beyond noise"
    return f"{versus['points']:+.2f} ({versus['low']:+.1f} to {versus['high']:+.1f}): {verdict}"


def _methods_table(result: dict) -> list[str]:
    lines = ["| student | method | test accuracy | vs scratch, points (95% interval of one run) | gap closed | "
             "parameters | size | batch-1 latency | batch-256 throughput | train wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"].values():
        gap = "–" if row["method"] == "from scratch" or row["gap_closed"] is None else f"{row['gap_closed']:+.0%}"
        lines.append(f"| {row['student']} | {row['method']} | {_accuracy(row, len(result['seeds']))} | "
                     f"{_versus_scratch(row)} | {gap} | "
                     f"{row['parameters']:,} | {row['size_bytes'] / 1024:.0f} KiB | {row['batch1_ms']:.3f} ms | "
                     f"{row['batch256_per_s']:,.0f}/s | {row['wall_time_s']:.0f} s |")
    return lines


def _speed_lines(speed: dict) -> list[str]:
    lines = [f"Epoch of {speed['train_samples']:,} images, batch {speed['batch_size']}, medians of "
             f"{speed['repeats']} interleaved repeats; peak memory of the probe process "
             f"{speed['peak_rss_mib']:.0f} MiB. The teacher's one pass over the training images, which builds "
             f"the cache, took {speed['teacher_pass_seconds']:.1f} s; it is paid once per teacher and transfer set, "
             "not per epoch or per student.", "",
             "| student | student alone | distillation, cached teacher | ratio | distillation, live teacher | ratio |",
             "|---|---|---|---|---|---|"]
    for name, measured in speed["students"].items():
        medians = measured["median_epoch_seconds"]
        lines.append(f"| {name} | {medians['student alone']:.2f} s | {medians['distillation, cached teacher']:.2f} s | "
                     f"**{measured['ratio_cached']:.2f}×** | {medians['distillation, live teacher']:.2f} s | "
                     f"{measured['ratio_live']:.2f}× |")
    lines += ["", "Where a cached distillation epoch's time goes (seconds, one epoch):", "",
              "| student | " + " | ".join(next(iter(speed["students"].values()))["profile_cached"]) + " |",
              "|---|" + "---|" * len(next(iter(speed["students"].values()))["profile_cached"])]
    for name, measured in speed["students"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in measured["profile_cached"].values()) + " |")
    return lines


def _link(path: Path, relative_to: Path) -> str:
    return os.path.relpath(path.resolve(), relative_to)


def markdown(result: dict, plots: dict[str, Path], relative_to: Path) -> str:
    teacher = result["teacher"]
    reference = result["reference"]
    lines = [f"Machine: {result['machine']}. Commit `{result['commit']}`. Command: `{result['command']}`"
             f"{' (quick: a slice of the data and short budgets)' if result['quick'] else ''}. "
             f"Seeds {result['seeds']}; " + (
                 "collected from the runs already finished, each trained by the suite's own code (a row's "
                 "settings are in its run directory's config.yaml)." if result.get("collected")
                 else f"suite wall time {result['suite_wall_time_s'] / 60:.0f} min."), "",
             f"Teacher: {teacher['accuracy']:.2%} test accuracy, {teacher['parameters']:,} parameters. "
             "Gap closed = (distilled − scratch) / (teacher − scratch), on the mean accuracies." + (
                 " Latency and throughput: every row's model timed by the suite at its end, one row after "
                 "another, 1,000 single-sample calls (median) and 30 batches of 256 per round, the best "
                 f"round kept (of {1 if result['quick'] else 5}), since the shared machine's interference only slows (one "
                 "seed's model; the seeds share the architecture)."
                 if result["rows"] else ""), "",
             *_methods_table(result), ""]
    if "methods" in plots:
        lines += [f"![methods]({_link(plots['methods'], relative_to)})", ""]
    if "sweep" in plots:
        lines += [f"![sweep]({_link(plots['sweep'], relative_to)})", ""]
    if result["speed"]:
        lines += ["### Speed", "", *_speed_lines(result["speed"]), ""]
    if result["reference"]:
        lines += _reference_lines(reference)
    return "\n".join(lines)


def _reference_lines(reference: dict) -> list[str]:
    return ["### The reference tutorial loop", "",
             f"MLP 512-256 teacher ({reference['teacher']['accuracy']:.2%}), 128-unit student, T 3, alpha 0.5, "
             f"5 epochs, batch 64, {reference['train_samples']:,} training images; distillation phase, median of "
             f"{len(reference['reference']['runs'])}:", "",
             "| loop | student test accuracy | distillation wall time |", "|---|---|---|",
             f"| tutorial loop (per-sample DataLoader, teacher on every batch) | "
             f"{reference['reference']['accuracy_mean']:.2%} | {reference['reference']['median_seconds']:.1f} s |",
             f"| distillery (`distillery.distill`, same budget) | {reference['distillery']['accuracy_mean']:.2%} | "
             f"{reference['distillery']['median_seconds']:.1f} s (**{reference['speedup']:.1f}× faster**) |"]


def write_section(result: dict, markdown_path: Path, plot_dir: Path, markers: tuple[str, str]) -> None:
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    if result["rows"]:
        plots["methods"] = method_bars(result, plot_dir / "methods.png")
    if result["sweep"]:
        plots["sweep"] = heat_map(result, plot_dir / "temperature_alpha.png")
    section = markdown(result, plots, markdown_path.resolve().parent)
    text = markdown_path.read_text() if markdown_path.is_file() else "# Benchmarks\n"
    start, end = markers
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## The suite (`make bench`)\n\n" + block + "\n"
    markdown_path.write_text(text)


if __name__ == "__main__":
    # Re-render: python benchmarks/suite_report.py SUITE_JSON MARKDOWN PLOT_DIR
    saved, markdown_path, plot_dir = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), Path(sys.argv[3])
    write_section(saved, markdown_path, plot_dir, ("<!-- suite:start -->", "<!-- suite:end -->"))
