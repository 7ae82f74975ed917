"""The report of language-model runs: test perplexity, next-token accuracy and agreement side by side, each
distilled run against the student trained on the text alone with its noise interval, and the figures."""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from distillery.atomic import atomic_write_text
from distillery.eval.language_plots import plot_language_curves, plot_perplexities
from distillery.eval.run_record import RunRecord, is_number
from distillery.eval.text_noise import nll_difference

_COLUMNS = ("model", "role", "test perplexity", "cross-entropy (nats/token)", "next-token accuracy",
            "agreement w/ teacher", "parameters", "test tokens")
_FIGURES = (("curves", "learning_curves.png", "Training loss parts and validation perplexity per epoch."),
            ("perplexity", "perplexity.png", "Test perplexity per model, and against its parameters."))


def is_language_run(run: RunRecord) -> bool:
    return run.evaluation.get("task") == "language_model"


def language_rows(runs: Sequence[RunRecord]) -> list[tuple[str, str, dict]]:
    """(name, role, metrics) per model; a teacher known only from a distilled run's evaluation is added once."""
    rows = [(run.name, run.role, run.evaluation) for run in runs]
    if not any(role == "teacher" for _, role, _ in rows):
        taught = next((run.evaluation["teacher"] for run in runs if isinstance(run.evaluation.get("teacher"), dict)),
                      None)
        if taught is not None:
            rows.insert(0, ("teacher (as scored in the distilled run)", "teacher", taught))
    return rows


def summary_lines(runs: Sequence[RunRecord]) -> list[str]:
    """Each distilled run against the run trained on the text alone (role scratch), on the same test blocks."""
    scratch = next((run for run in runs if run.role == "scratch"), None)
    if scratch is None:
        return []
    lines = []
    for run in runs:
        if run.role != "distilled":
            continue
        ours, theirs = run.evaluation, scratch.evaluation
        if ours.get("block_tokens") and ours.get("block_tokens") == theirs.get("block_tokens"):
            change = nll_difference(ours["block_nll"], theirs["block_nll"], ours["block_tokens"]).describe()
            lines.append(f"{run.name}: against {scratch.name} (the text alone), {change}")
        else:
            lines.append(f"{run.name}: perplexity {ours['perplexity']:.2f} against {theirs['perplexity']:.2f} for "
                         f"{scratch.name} (test blocks differ: no noise interval)")
    return lines


def write_language_report(runs: Sequence[RunRecord], output_dir: Path, title: str) -> dict[str, Path]:
    """report.md, report.html, learning_curves.png and perplexity.png for language-model runs."""
    rows = language_rows(runs)
    paths = {"learning_curves": plot_language_curves(runs, output_dir / "learning_curves.png"),
             "perplexity": plot_perplexities([(name, metrics["perplexity"], metrics.get("parameters"))
                                              for name, _, metrics in rows], output_dir / "perplexity.png")}
    cells = [_cells(name, role, metrics) for name, role, metrics in rows]
    lines = summary_lines(runs)
    markdown = [f"# {title}", "", _row(_COLUMNS), _row(["---"] * len(_COLUMNS)), *(_row(c) for c in cells), ""]
    markdown += [f"- {line}" for line in lines] + [""]
    for file_name, caption in ((f, c) for _, f, c in _FIGURES):
        markdown += [f"![{caption}]({file_name})", "", f"*{caption}*", ""]
    escape = html.escape
    table = ("<table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in cells)
             + "</tbody></table>")
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(paths[key].read_bytes()).decode()}" '
        f'alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'
        for key, (_, _, caption) in zip(("learning_curves", "perplexity"), _FIGURES))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title></head><body>'
            f"<h1>{escape(title)}</h1>{table}<ul>{''.join(f'<li>{escape(x)}</li>' for x in lines)}</ul>{figures}"
            "</body></html>\n")
    return {"markdown": atomic_write_text(output_dir / "report.md", "\n".join(markdown)),
            "html": atomic_write_text(output_dir / "report.html", page), **paths}


def _cells(name: str, role: str, metrics: dict) -> list[str]:
    def number(key: str, text: str) -> str:
        return text.format(metrics[key]) if is_number(metrics.get(key)) else "–"
    return [name, role, number("perplexity", "{:.2f}"), number("nll", "{:.3f}"), number("accuracy", "{:.2%}"),
            number("agreement", "{:.2%}"), number("parameters", "{:,}"), number("tokens", "{:,}")]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(html.escape(str(cell), quote=False).replace("|", "\\|") for cell in cells) + " |"
