"""Feeding every teacher exactly the inputs it was trained on, whatever the student's own preprocessing.

A run's batches reach the method in the student's preprocessing. A teacher records its own in its
checkpoint (``"preprocessing"``: a normaliser's mean and std, or null for raw inputs); the two may
differ (a teacher trained without normalisation, a student that normalises; or two teachers trained
on differently normalised data). A forward pre-hook on the teacher maps each batch back to raw inputs
with the student's normaliser and then through the teacher's own, so the teacher, its cached outputs
and its features are those of its own pipeline. Module paths and the teacher's weights stay as they
were, so feature methods address the teacher as before.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn
from torch.utils.hooks import RemovableHandle

from distillery.data import Normalizer
from distillery.errors import CheckpointError, DistilleryError


def teacher_normalizer(preprocessing: Any, source: str) -> Normalizer | None:
    """The normaliser a teacher's recorded ``preprocessing`` describes; None (nothing recorded) means raw inputs.

    Raises CheckpointError naming ``source`` when the record is malformed.
    """
    if preprocessing is None:
        return None
    try:
        if not isinstance(preprocessing, dict):
            raise TypeError(f"a mapping of mean and std, not {type(preprocessing).__name__}")
        return Normalizer.from_dict(preprocessing)
    except (DistilleryError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source} records a malformed preprocessing ({error}); "
                              "fix its model.json or retrain it") from None


def _channels(normalizer: Normalizer | None) -> int:
    return len(normalizer.mean) if normalizer is not None else 1


def feed_own_inputs(teacher: nn.Module, student: Normalizer | None, preprocessing: Any, *,
                    input_shape: Sequence[int], source: str) -> RemovableHandle | None:
    """Make ``teacher`` see its own pipeline when given batches in the ``student``'s; returns the hook's handle.

    ``preprocessing`` is the teacher's record (see :func:`teacher_normalizer`); ``input_shape`` the
    data's [C, H, W] or [F]. Nothing is added when both pipelines are the same. The map is
    ``own(raw)`` with ``raw = x · std_student + mean_student`` (or ``x`` when the student has none).
    Raises CheckpointError when the teacher's record does not fit the data's channels.

    Example::

        feed_own_inputs(teacher, data.normalizer, metadata["preprocessing"], input_shape=(1, 28, 28),
                        source="runs/teacher")
    """
    own = teacher_normalizer(preprocessing, source)
    if own == student:
        return None
    channels = input_shape[0]  # an image's channels, or a table's features: what a normaliser is fitted per
    if _channels(own) not in (1, channels):
        raise CheckpointError(f"teacher {source} was trained on inputs of {_channels(own)} channels (or features) but "
                              f"the data has {channels}; set data.channels: {_channels(own)} for images, or use the "
                              "data the teacher was trained for")

    def own_pipeline(_module: nn.Module, args: tuple) -> tuple:
        inputs = args[0]
        raw = student.denormalize(inputs) if student is not None else inputs
        return (own(raw) if own is not None else raw, *args[1:])

    return teacher.register_forward_pre_hook(own_pipeline)


def pipeline_description(student: Normalizer | None, teacher_preprocessing: Sequence[Any]) -> dict[str, Any]:
    """What a cache of the teachers' outputs on raw transfer inputs depends on besides data and weights.

    Example::

        pipeline_description(data.normalizer, [t.metadata.get("preprocessing") for t in teachers])
    """
    return {"student": student.to_dict() if student is not None else None,
            "teachers": [dict(p) if isinstance(p, dict) else p for p in teacher_preprocessing]}
