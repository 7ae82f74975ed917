"""Claiming a folder for what a command writes: a new, empty or marked one only, never a folder of the user's."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from distillery.atomic import atomic_write_text
from distillery.errors import RunExistsError

# How an output written before its command left a marker may still be recognised (an older run directory).
Recognise = Callable[[Path], bool]


def is_claimable(path: str | Path, marker: str, recognise: Recognise | None = None) -> bool:
    """True when ``path`` is missing, an empty folder, or an earlier output: it carries ``marker`` (or
    ``recognise`` knows it). Any other folder is the user's own."""
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()):
        return True
    return (path / marker).is_file() or (recognise is not None and recognise(path))


def check_claimable(path: str | Path, marker: str, what: str, recognise: Recognise | None = None) -> None:
    """Raise RunExistsError, naming a few of its files, when ``path`` is a file or a folder of the user's."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunExistsError(f"{what} output {path} is a file; choose a directory name")
    if not is_claimable(path, marker, recognise):
        shown = ", ".join(sorted(entry.name for entry in path.iterdir())[:3])
        raise RunExistsError(f"{path} holds files that are not a distillery {what}'s ({shown}); choose a new or "
                             "empty directory")


def claim_output_dir(path: str | Path, marker: str, what: str, recognise: Recognise | None = None) -> Path:
    """Create ``path`` (if needed) for ``what`` (e.g. "report") and mark it with the file ``marker``.

    A folder that already holds files is accepted only if it carries ``marker`` (or ``recognise`` knows it),
    i.e. an earlier output of the same command, whose files may be replaced; anything else is the user's and
    raises RunExistsError, as does a path that is a file or cannot be written.

    Example::

        output = claim_output_dir("runs/report", ".distillery-report", "report")
    """
    path = Path(path)
    check_claimable(path, marker, what, recognise)
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / marker, json.dumps({"format": marker.lstrip(".")}) + "\n")
    except OSError as error:
        raise RunExistsError(f"cannot write to {path} ({error.strerror}); choose a directory you can write to") from None
    return path
