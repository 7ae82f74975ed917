"""The report: reads finished run directories and compares them in Markdown, HTML and PNG plots.

The run-directory format is described in docs/run-directory.md; this module reads nothing else.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from distillery.atomic import atomic_write_text
from distillery.errors import DistilleryError
from distillery.eval.confusion_plot import confusion_of, plot_confusion
from distillery.eval.language_report import is_language_run, write_language_report
from distillery.eval.latency import environment_difference, unstable_reason
from distillery.eval.noise import accuracy_difference
from distillery.eval.per_class import per_class_html, per_class_markdown
from distillery.eval.plots import plot_comparison, plot_learning_curves, plot_reliability
from distillery.eval.run_record import RunRecord, is_number, load_run, nested
from distillery.output_dir import claim_output_dir

_MISSING = "–"
_COLUMNS = (
    "model", "role", "test accuracy", "NLL", "ECE", "agreement w/ teacher", "parameters", "size",
    "batch-1 latency (median / p95)", "batch-256 throughput",
)
_FIGURES = (
    ("learning_curves", "learning_curves.png", "Learning curves: training loss parts and validation accuracy per epoch."),
    ("comparison", "comparison.png", "Test accuracy per model, and accuracy against batch-1 latency (marker area ∝ parameters)."),
    ("reliability", "reliability.png", "Reliability diagrams: accuracy per confidence bin (number and opacity: its "
     "samples); the dashed diagonal is perfect calibration."),
    ("confusion", "confusion.png", "Confusion matrices: test samples of each true class (rows) by predicted class "
     "(columns), coloured by share of the row."),
)
_PLOTTERS = {"learning_curves": plot_learning_curves, "comparison": plot_comparison, "reliability": plot_reliability,
             "confusion": plot_confusion}


def comparison_table(runs: Sequence[RunRecord]) -> str:
    """A Markdown table comparing the runs, followed by size/speed and distillation-gain summary lines.

    Example: ``print(comparison_table([load_run("runs/teacher"), load_run("runs/kd")]))``
    """
    lines = [_markdown_row(_COLUMNS), _markdown_row(["---"] * len(_COLUMNS))]
    lines += [_markdown_row(row) for row in _table_rows(runs)]
    summary = _summary_lines(runs)
    if summary:
        lines.append("")
        lines += [f"- {_markdown_text(line)}" for line in summary]
    return "\n".join(lines) + "\n"


def write_report(
    run_dirs: Sequence[str | Path], output_dir: str | Path, title: str = "Distillation report"
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots comparing the given runs into ``output_dir``.

    Returns the paths by key: markdown, html, learning_curves, comparison, reliability, and confusion (a
    confusion matrix per run, written only when some run's evaluation.json records one). Both documents hold
    a per-class accuracy table when some run records per-class results. Language-model runs (all given runs
    must be) get their own report: perplexity, next-token accuracy, agreement, each distilled run against the
    one trained on the text alone with a paired interval over test blocks, learning curves and perplexity.png.
    Raises DistilleryError for no runs, a mix of the two kinds, or a directory that is not a finished run.
    Example: ``write_report(["runs/teacher", "runs/scratch", "runs/kd"], "runs/report")["html"]``
    """
    if not run_dirs:
        raise DistilleryError("no run directories given; pass at least one directory written by `distillery train/distill`")
    runs = [load_run(run_dir) for run_dir in run_dirs]
    language = [is_language_run(run) for run in runs]
    if any(language) and not all(language):
        raise DistilleryError("a report compares language-model runs with each other, not with classifiers; "
                              "give the language-model runs alone")
    output_dir = claim_output_dir(output_dir, ".distillery-report", "report")  # never a folder of the user's
    if all(language):
        return write_language_report(runs, output_dir, title)
    figures = _figures(runs)
    paths = {key: _PLOTTERS[key](runs, output_dir / file_name) for key, file_name, _ in figures}
    paths["markdown"] = atomic_write_text(output_dir / "report.md", _render_markdown(runs, title, figures))
    paths["html"] = atomic_write_text(output_dir / "report.html", _render_html(runs, title, figures, paths))
    return {"markdown": paths.pop("markdown"), "html": paths.pop("html"), **paths}


def _figures(runs: Sequence[RunRecord]) -> list[tuple[str, str, str]]:
    # A confusion plot only when there is a matrix to draw: older evaluation.json files have none.
    has_confusion = any(confusion_of(run) is not None for run in runs)
    return [figure for figure in _FIGURES if figure[0] != "confusion" or has_confusion]


def _table_rows(runs: Sequence[RunRecord]) -> list[list[str]]:
    """The comparison table's cells as plain text, shared by the Markdown and HTML renderings."""
    rows = []
    for run in runs:
        evaluation = run.evaluation
        latency = evaluation.get("latency") or {}
        median, p95 = latency.get("batch1_median_ms"), latency.get("batch1_p95_ms")
        # A timing whose own rounds disagree is shown, but marked: the number alone would look as good as any.
        unstable = " (unstable)" if unstable_reason(latency) else ""
        if is_number(median) or is_number(p95):
            latency_text = f"{_fixed(median, 3)} / {_fixed(p95, 3)} ms{unstable}"
        else:
            latency_text = _MISSING
        throughput = latency.get("batch256_samples_per_s")
        rows.append([
            run.name,
            run.role,
            _percent(evaluation.get("accuracy")),
            _fixed(evaluation.get("nll"), 3),
            _fixed(evaluation.get("ece"), 3),
            _percent(evaluation.get("agreement")),
            f"{int(_parameters(run)):,}" if is_number(_parameters(run)) else _MISSING,
            _human_size(evaluation.get("size_bytes")),
            latency_text,
            f"{round(throughput):,} samples/s{unstable}" if is_number(throughput) else _MISSING,
        ])
    return rows


def _summary_lines(runs: Sequence[RunRecord]) -> list[str]:
    """Plain-text sentences: each student against the teacher, and each distilled run against scratch."""
    teacher = next((run for run in runs if run.role == "teacher"), None)
    scratch = next((run for run in runs if run.role == "scratch"), None)
    lines = []
    if teacher is not None:
        for run in runs:
            if run.role != "teacher" and (sentence := _size_speed_sentence(run, teacher)):
                lines.append(f"{run.name}: {sentence}")
    if scratch is None:
        return lines
    for run in runs:
        if run.role == "distilled" and (sentence := _gain_sentence(run, scratch, teacher)):
            lines.append(f"{run.name}: {sentence}")
    return lines


def _size_speed_sentence(student: RunRecord, teacher: RunRecord) -> str | None:
    # Bytes on disk when both runs report them, else parameter counts: either answers "how much smaller".
    size_ratio = _ratio(teacher.evaluation.get("size_bytes"), student.evaluation.get("size_bytes"))
    if size_ratio is None:
        size_ratio = _ratio(_parameters(teacher), _parameters(student))
    speed_ratio = _ratio(*(nested(run.evaluation, "latency", "batch1_median_ms") for run in (teacher, student)))
    distrust = _speed_distrust(student, teacher) if speed_ratio is not None else None
    parts = []
    if size_ratio is not None:
        parts.append(_ratio_phrase(size_ratio, "smaller", "larger"))
    if speed_ratio is not None and distrust is None:
        parts.append(_ratio_phrase(speed_ratio, "faster", "slower") + " at batch 1")
    sentence = f"student is {' and '.join(parts)} than the teacher" if parts else ""
    if distrust is not None:
        sentence += ("; " if sentence else "") + f"speed not compared: {distrust}"
    return sentence or None


def _speed_distrust(student: RunRecord, teacher: RunRecord) -> str | None:
    """Why a batch-1 speed ratio would mislead: a measurement's own spread, or unlike conditions; None if neither."""
    latencies = {run.name: run.evaluation.get("latency") for run in (teacher, student)}
    for name, latency in latencies.items():
        if reason := unstable_reason(latency):
            return f"the latency measurement of {name} was unstable ({reason})"
    if difference := environment_difference(*latencies.values()):
        return f"latencies measured under different conditions ({difference})"
    return None


def _ratio(numerator, denominator) -> float | None:
    if is_number(numerator) and is_number(denominator) and numerator > 0 and denominator > 0:
        return numerator / denominator
    return None


def _ratio_phrase(ratio: float, better: str, worse: str) -> str:
    # "0.5× smaller" reads wrong; a student that is bigger or slower gets the inverse ratio and the honest word.
    return f"{ratio:.1f}× {better}" if ratio >= 1 else f"{1 / ratio:.1f}× {worse}"


def _gain_sentence(distilled: RunRecord, scratch: RunRecord, teacher: RunRecord | None) -> str | None:
    distilled_accuracy, scratch_accuracy = distilled.evaluation.get("accuracy"), scratch.evaluation.get("accuracy")
    if not (is_number(distilled_accuracy) and is_number(scratch_accuracy)):
        return None
    gain = 100 * (distilled_accuracy - scratch_accuracy)
    samples = distilled.evaluation.get("samples")
    if isinstance(samples, int) and samples == scratch.evaluation.get("samples") and samples > 0:
        unit = "test texts" if distilled.evaluation.get("task") == "text_classification" else "test images"
        change = accuracy_difference(distilled_accuracy, scratch_accuracy, samples).describe(unit)
    else:  # runs evaluated on different test sets: no interval for their difference
        change = f"{gain:+.2f} points (test sets differ: no noise interval)"
    sentence = f"distillation changed test accuracy by {change}, against the student trained from scratch"
    teacher_accuracy = teacher.evaluation.get("accuracy") if teacher is not None else None
    # A gap is only meaningful when the teacher beats the scratch student.
    if is_number(teacher_accuracy) and teacher_accuracy > scratch_accuracy:
        share = gain / (100 * (teacher_accuracy - scratch_accuracy))
        if share >= 0:
            sentence += f" (closing {100 * share:.0f}% of the teacher–scratch gap)"
        else:
            sentence += f" (widening the teacher–scratch gap by {-100 * share:.0f}%)"
    return sentence


def _run_details(run: RunRecord) -> list[tuple[str, str]]:
    """Key facts of one run for its report section, only those the run records."""
    config = run.metadata.get("config") or {}
    method = _find_key(config, "method")
    if isinstance(method, dict):
        method = method.get("name")
    epochs = _find_key(config, "epochs")
    dataset = nested(run.metadata, "dataset", "name")
    items = [
        ("run directory", str(run.run_dir)),
        ("role", run.role),
        ("method", method),
        ("temperature", _find_key(config, "temperature")),
        ("alpha", _find_key(config, "alpha")),
        ("epochs", epochs if epochs is not None else (len(run.history) or None)),
        ("architecture", _describe_architecture(run.metadata.get("architecture"))),
        ("dataset", dataset),
        ("test samples", run.evaluation.get("samples")),
    ]
    return [(label, str(value)) for label, value in items if value not in (None, "")]


def _find_key(config, key: str):
    """The first value under ``key`` anywhere in the nested config; the config layout is not fixed here."""
    if isinstance(config, dict):
        if key in config:
            return config[key]
        children = config.values()
    elif isinstance(config, list):
        children = config
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def _describe_architecture(architecture) -> str | None:
    if not isinstance(architecture, dict):
        return str(architecture) if architecture else None
    options = ", ".join(f"{key}={value}" for key, value in architecture.items() if key != "name")
    name = architecture.get("name", "model")
    return f"{name} ({options})" if options else str(name)


def _render_markdown(runs: Sequence[RunRecord], title: str, figures: list[tuple[str, str, str]]) -> str:
    parts = [f"# {_markdown_text(title)}", "", comparison_table(runs)]
    for _, file_name, caption in figures:
        parts += [f"![{caption}]({file_name})", "", f"*{caption}*", ""]
    parts += per_class_markdown(runs, _markdown_row)
    parts.append("## Runs")
    for run in runs:
        parts += ["", f"### {_markdown_text(run.name)}", ""]
        parts += [f"- **{label}**: {_markdown_text(value)}" for label, value in _run_details(run)]
    return "\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dt { font-weight: 600; }
"""


def _render_html(runs: Sequence[RunRecord], title: str, figures: list[tuple[str, str, str]],
                 image_paths: dict[str, Path]) -> str:
    escape = html.escape
    header = "".join(f"<th>{escape(column)}</th>" for column in _COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>\n" for row in _table_rows(runs)
    )
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<table><thead><tr>{header}</tr></thead><tbody>\n{body}</tbody></table>",
    ]
    summary = _summary_lines(runs)
    if summary:
        parts.append("<ul>" + "".join(f"<li>{escape(line)}</li>" for line in summary) + "</ul>")
    for key, _, caption in figures:
        # Embedded so the report is one file that can be mailed or archived without its PNGs.
        encoded = base64.b64encode(Path(image_paths[key]).read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    parts.append(per_class_html(runs))
    parts.append("<h2>Runs</h2>")
    for run in runs:
        details = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in _run_details(run))
        parts.append(f"<section><h3>{escape(run.name)}</h3><dl>{details}</dl></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown_row(cells: Sequence[str]) -> str:
    # A pipe inside a run name would split its cell.
    return "| " + " | ".join(_markdown_text(cell).replace("|", "\\|") for cell in cells) + " |"


def _markdown_text(text: str) -> str:
    # Markdown passes raw HTML through, so a run named "<kd>" would vanish from the rendered page.
    return html.escape(str(text), quote=False)


def _parameters(run: RunRecord):
    return run.evaluation.get("parameters", run.metadata.get("parameters"))


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if is_number(value) else _MISSING


def _fixed(value, decimals: int) -> str:
    return f"{value:.{decimals}f}" if is_number(value) else _MISSING


def _human_size(size_bytes) -> str:
    if not is_number(size_bytes):
        return _MISSING
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{int(size_bytes)} B"
