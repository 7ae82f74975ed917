"""Loading the teacher or teachers a run names, and combining several into one over the student's classes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

from torch import nn

from distillery.teachers.ensemble import EnsembleTeacher
from distillery.teachers.label_space import LabelSpaceMerge
from distillery.teachers.loading import load_teacher


@dataclass
class LoadedTeacher:
    model: nn.Module
    metadata: dict[str, Any]
    path: str


def load_teachers(paths: str | Sequence[str], *, allow_factories: Collection[str] = ()) -> list[LoadedTeacher]:
    """Each checkpoint frozen, with its metadata (its recorded preprocessing among it: see
    :mod:`distillery.teachers.inputs` for how each is fed its own). ``allow_factories`` as for
    :func:`distillery.teachers.load_teacher`.

    Example::

        teachers = load_teachers(["runs/cnn", "runs/resnet"])
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return [LoadedTeacher(*load_teacher(path, allow_factories=allow_factories), str(path)) for path in paths]


def combine_teachers(teachers: list[LoadedTeacher], *, classes: Sequence[str], weights: Sequence[float] | None,
                     combine: str, temperature: float) -> nn.Module:
    """Teachers as one teacher over ``classes`` (the student's).

    Teachers that all predict exactly ``classes``: one as it is, several as an EnsembleTeacher
    averaging by ``combine`` at ``temperature``. Otherwise (other class sets, or another order) a
    LabelSpaceMerge by class name; a checkpoint that records no class names is taken to predict ``classes``.

    Example::

        teacher = combine_teachers(load_teachers(["runs/low", "runs/high"]), classes=[str(d) for d in range(10)],
                                   weights=None, combine="probabilities", temperature=4.0)
    """
    classes = [str(name) for name in classes]
    own_classes = [[str(name) for name in t.metadata.get("class_names") or classes] for t in teachers]
    if any(own != classes for own in own_classes):
        return LabelSpaceMerge([t.model for t in teachers], own_classes, classes, weights=weights,
                               names=[t.path for t in teachers])
    if len(teachers) == 1:
        return teachers[0].model
    return EnsembleTeacher([t.model for t in teachers], weights=weights, combine=combine, temperature=temperature)
