"""Loading teachers from checkpoints, frozen."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from torch import nn

from distillery.models.checkpoint import load_model
from distillery.teachers.frozen import freeze


def load_teacher(path: str | Path, *, allow_factories: Collection[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint's model, frozen and in eval mode, with its metadata.

    ``allow_factories``: the ``package.module:function`` factories the checkpoint may name (see
    :func:`distillery.models.checkpoint.load_model`); built-in architectures are always allowed.

    Example::

        teacher, metadata = load_teacher("runs/teacher")
    """
    model, metadata = load_model(path, allow_factories=allow_factories)
    return freeze(model), metadata
