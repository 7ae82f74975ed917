"""A finished run directory as the report reads it (see docs/run-directory.md), and the reading helpers
the report's tables and plots share."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from distillery.errors import DistilleryError

_REQUIRED_FILES = ("metrics.jsonl", "evaluation.json", "model.json")


@dataclass
class RunRecord:
    """One finished run directory, as read by :func:`load_run`."""

    run_dir: Path
    name: str
    role: str
    history: list[dict] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a finished run directory (metrics.jsonl, evaluation.json, model.json).

    Example: ``record = load_run("runs/fashion-kd"); record.evaluation["accuracy"]``
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistilleryError(f"run directory {run_dir} does not exist; pass the directory a `distillery train/distill` run wrote")
    missing = [name for name in _REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DistilleryError(
            f"{run_dir} is not a finished distillery run: {' and '.join(missing)} {verb} missing; "
            "run `distillery train/distill` first"
        )
    evaluation = _read_json_object(run_dir / "evaluation.json")
    metadata = _read_json_object(run_dir / "model.json")
    role = evaluation.get("role") or metadata.get("role") or "unknown"
    return RunRecord(
        run_dir=run_dir,
        name=str(evaluation.get("name") or run_dir.name),
        role=str(role),
        history=_read_jsonl(run_dir / "metrics.jsonl"),
        evaluation=evaluation,
        metadata=metadata,
    )


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DistilleryError(f"{path} is not valid JSON (line {error.lineno}: {error.msg}); re-run the evaluation") from None
    except UnicodeDecodeError:
        raise DistilleryError(f"{path} is not UTF-8 text; re-run the evaluation") from None
    if not isinstance(value, dict):
        raise DistilleryError(f"{path} must hold a JSON object, found {type(value).__name__}")
    return value


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DistilleryError(f"{path} is not UTF-8 text") from None
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DistilleryError(f"{path} line {line_number} is not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DistilleryError(f"{path} line {line_number} must be a JSON object, found {type(row).__name__}")
        rows.append(row)
    return rows


def nested(mapping: dict, *keys: str):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
