"""Loading the teacher or teachers a run names, and combining several into one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from distillery.errors import ModelError
from distillery.teachers.ensemble import EnsembleTeacher
from distillery.teachers.loading import load_teacher


@dataclass
class LoadedTeacher:
    model: nn.Module
    metadata: dict[str, Any]
    path: str


def load_teachers(paths: str | Sequence[str]) -> list[LoadedTeacher]:
    """Each checkpoint frozen, with its metadata. All must share one preprocessing, which the student then uses.

    Example::

        teachers = load_teachers(["runs/cnn", "runs/resnet"])
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    loaded = [LoadedTeacher(*load_teacher(path), str(path)) for path in paths]
    first = loaded[0]
    for other in loaded[1:]:
        if other.metadata.get("preprocessing") != first.metadata.get("preprocessing"):
            raise ModelError(f"teachers {first.path} and {other.path} were trained with different input "
                             "normalisation; an ensemble must see the same inputs: train them on the same data")
    return loaded


def combine_teachers(teachers: list[LoadedTeacher], *, weights: Sequence[float] | None, combine: str,
                     temperature: float) -> nn.Module:
    """One teacher as it is; several as an EnsembleTeacher averaging at ``temperature``."""
    if len(teachers) == 1:
        return teachers[0].model
    return EnsembleTeacher([t.model for t in teachers], weights=weights, combine=combine, temperature=temperature)
