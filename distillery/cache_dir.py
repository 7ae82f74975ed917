"""Where caches live: the teacher-output cache and decoded image folders share one directory."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$DISTILLERY_CACHE``, else ``$XDG_CACHE_HOME/distillery``, else ``~/.cache/distillery``."""
    if os.environ.get("DISTILLERY_CACHE"):
        return Path(os.environ["DISTILLERY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillery"
