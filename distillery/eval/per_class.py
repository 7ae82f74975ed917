"""The report's per-class view: each run's test accuracy per class, with the classes named as its model.json names them.

Reads evaluation.json's ``per_class`` and ``confusion_matrix`` (see docs/run-directory.md); runs evaluated
before these were recorded simply have no column.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from distillery.eval.run_record import RunRecord, is_number

_MISSING = "–"


def class_names(run: RunRecord) -> list[str] | None:
    """The names of the classes the run's per-class results are indexed by: model.json's ``class_names`` when
    there is one name per class, else "0".."C-1"; None when the run recorded no per-class results.

    Example: ``class_names(load_run("runs/kd"))`` -> ``["T-shirt/top", "Trouser", ...]``
    """
    accuracies = _per_class(run).get("accuracy")
    if not isinstance(accuracies, list):
        return None
    names = run.metadata.get("class_names")
    if isinstance(names, list) and len(names) == len(accuracies):
        return [str(name) for name in names]
    return [str(index) for index in range(len(accuracies))]


def per_class_table(runs: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the per-class accuracy table: one row per class (matched by name across runs, in
    order of first appearance), one column per run, then the class's test samples; None when no run has
    per-class results.

    Example: ``header, rows = per_class_table(runs)``; ``rows[3]`` -> ``["3", "96.97%", "97.10%", "33"]``
    """
    by_run = [(run, class_names(run)) for run in runs]
    if not any(names for _, names in by_run):
        return None
    order = list(dict.fromkeys(name for _, names in by_run for name in names or []))
    header = ["class", *(run.name for run in runs), "test samples"]
    rows = []
    for name in order:
        cells, samples = [name], None
        for run, names in by_run:
            index = names.index(name) if names and name in names else None
            per_class = _per_class(run)
            cells.append(_percent(_at(per_class.get("accuracy"), index)))
            samples = samples if samples is not None else _at(per_class.get("samples"), index)
        rows.append(cells + [f"{int(samples):,}" if is_number(samples) else _MISSING])
    return header, rows


def per_class_markdown(runs: Sequence[RunRecord], row_text: Callable[[Sequence[str]], str]) -> list[str]:
    """The Markdown section (lines) with the per-class table; ``row_text`` renders one row of cells.

    Example: ``per_class_markdown(runs, _markdown_row)``
    """
    table = per_class_table(runs)
    if table is None:
        return []
    header, rows = table
    return ["## Per-class test accuracy", "", row_text(header), row_text(["---"] * len(header)),
            *(row_text(row) for row in rows), ""]


def per_class_html(runs: Sequence[RunRecord]) -> str:
    """The HTML section with the per-class table, or "" when no run has per-class results.

    Example: ``per_class_html(runs)``
    """
    table = per_class_table(runs)
    if table is None:
        return ""
    header, rows = table
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>\n" for row in rows)
    return f"<h2>Per-class test accuracy</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _per_class(run: RunRecord) -> dict:
    per_class = run.evaluation.get("per_class")
    return per_class if isinstance(per_class, dict) else {}


def _at(values, index: int | None):
    if index is None or not isinstance(values, list) or index >= len(values):
        return None
    return values[index]


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if is_number(value) else _MISSING
