"""The files a tune writes: tune.json (after every point), tune.md, best.yaml and the tune.png heat map."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from distillery.app.config.files import dump_config
from distillery.app.workflows.tune_result import TunePoint, TuneResult, short_name
from distillery.atomic import atomic_write_text


def write_tune_files(output_dir: Path, plan: dict[str, Any], finished: list[TunePoint],
                     grid: Mapping[str, list[Any]], wall_seconds: float, result: TuneResult | None = None) -> None:
    """tune.json with the points finished so far; with ``result`` (the tune is over) every file.

    Example: ``write_tune_files(Path("runs/tune"), plan, points, grid, 12.5, result)``
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "finished" if result is not None else "running",
        "plan": plan,
        "grid": dict(grid),
        "epochs": plan["epochs"],
        "wall_seconds": round(wall_seconds, 2),
        "points": [_point_record(point) for point in finished],
        "selected_by": "val_accuracy",
    }
    if result is not None:
        record.update(best=result.best.name, summary=result.summary, pays=result.pays)
    atomic_write_text(output_dir / "tune.json", json.dumps(record, indent=2))
    if result is None:
        return
    atomic_write_text(output_dir / "tune.md", tune_table(result))
    atomic_write_text(output_dir / "best.yaml", _best_yaml(result))
    if len(grid) == 2:
        from distillery.eval.tune_plot import plot_tune_heatmap  # matplotlib is slow to import; only two keys need it

        rows, columns = grid.values()
        # The points come in grid order (itertools.product): row by row.
        accuracy = [point.val_accuracy for point in result.points]
        best = divmod(result.points.index(result.best), len(columns))
        plot_tune_heatmap([accuracy[row * len(columns):(row + 1) * len(columns)] for row in range(len(rows))],
                          [str(row) for row in rows], [str(column) for column in columns],
                          [short_name(key, grid) for key in grid], result.scratch.val_accuracy, best,
                          output_dir / "tune.png")


def _point_record(point: TunePoint) -> dict[str, Any]:
    return {"name": point.name, "settings": point.settings, "run_dir": str(point.run_dir),
            "val_accuracy": point.val_accuracy, "test_accuracy": point.test_accuracy,
            "train_seconds": round(point.train_seconds, 2), "reused": point.reused}


def tune_table(result: TuneResult) -> str:
    """Markdown: every point and the scratch reference, sorted by validation accuracy, the best marked.

    Test accuracy stays out of the table: it must not take part in choosing (it is in tune.json).
    """
    keys = list(result.best.settings)
    header = ["", *(short_name(key, result.best.settings) for key in keys), "val accuracy", "vs scratch",
              "train s", "run"]
    rows = []
    ranked = sorted([result.scratch, *result.points], key=lambda point: -point.val_accuracy)
    for point in ranked:
        mark = "**best**" if point is result.best else ("from scratch" if not point.settings else "")
        values = [str(point.settings[key]) if point.settings else "—" for key in keys]
        delta = point.val_accuracy - result.scratch.val_accuracy
        rows.append([mark, *values, f"{point.val_accuracy:.2%}", "—" if not point.settings else f"{100 * delta:+.2f} pt",
                     f"{point.train_seconds:.1f}", point.name])
    lines = [f"# Tune: {result.summary}", "",
             f"Chosen by validation accuracy, {len(result.points)} grid points plus the student from scratch "
             "with the same budget.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _best_yaml(result: TuneResult) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in result.best.settings.items())
    comment = (f"# The best grid point of the tune in {result.output_dir} ({settings}), by validation accuracy,\n"
               f"# at the config's own epochs: {result.summary}\n")
    return comment + dump_config(result.best_config)
