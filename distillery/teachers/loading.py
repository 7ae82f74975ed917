"""Loading teachers from checkpoints, frozen."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distillery.models.checkpoint import load_model
from distillery.teachers.frozen import freeze


def load_teacher(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint's model, frozen and in eval mode, with its metadata.

    Example::

        teacher, metadata = load_teacher("runs/teacher")
    """
    model, metadata = load_model(path)
    return freeze(model), metadata
