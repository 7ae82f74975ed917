"""Writing files so that a crash at any moment leaves the previous good file, never a half-written one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temporary name beside ``path``, then rename it over ``path``.

    The rename is atomic on one file system, so readers see the old file or the new one. A
    failed write removes its temporary file and leaves ``path`` as it was.

    Example::

        atomic_write(run_dir / "evaluation.json", lambda p: p.write_text(text))
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` for text (UTF-8)."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
