"""The step contract: one batch type for every kind of input, and how a model is called on it.

A :class:`Batch` carries the inputs (one tensor, or a mapping of tensors such as ``input_ids`` and
``attention_mask``), the labels (one per sample ``[B]``, or one per position ``[B, P]``), an optional
mask of the samples or positions that count, and the samples' indices in their dataset (which a
teacher-output cache is keyed by). The trainer, every method, the cache, sharding under torchrun,
resume and evaluation all read batches through this one type.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Union

import torch
from torch import nn

from distillery.errors import DataError

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]

# The label of a sample or position that has none: a hidden label in a partly labelled transfer set (-1), or
# Hugging Face's ignore index (-100). Any negative label is left out of every hard-label term.
UNLABELED = -1


@dataclass(frozen=True)
class Batch:
    """One batch: ``inputs``, ``labels`` (or None), ``mask`` (bool, True = counts; or None: all count), ``indices``.

    Shapes: the first dimension of every tensor is the batch ``B``; ``labels`` and ``mask`` are ``[B]`` for
    one prediction per sample or ``[B, P]`` for one per position (tokens), matching the logits' leading
    dimensions ``[B, C]`` or ``[B, P, C]``. ``indices`` are int64 positions in the dataset, kept on the CPU.

    Unpacks as ``inputs, labels, indices`` so loops written for triples keep working. Example::

        batch = Batch(torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
        logits = model_logits(model, batch.inputs)
    """

    inputs: Inputs
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """The number of samples (the first dimension)."""
        return first_tensor(self.inputs).shape[0]

    @property
    def device(self) -> torch.device:
        """The device the inputs are on."""
        return first_tensor(self.inputs).device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Inputs, labels and mask on ``device``; indices stay on the CPU, where caches are."""
        def move(value):
            return value.to(device, non_blocking=non_blocking) if value is not None else None
        inputs = ({name: move(value) for name, value in self.inputs.items()} if isinstance(self.inputs, Mapping)
                  else move(self.inputs))
        return replace(self, inputs=inputs, labels=move(self.labels), mask=move(self.mask))

    def rows(self, selector: slice | torch.Tensor) -> "Batch":
        """The samples ``selector`` picks (a slice or index tensor), from every part of the batch."""
        def pick(value):
            return value[selector] if value is not None else None
        inputs = ({name: value[selector] for name, value in self.inputs.items()} if isinstance(self.inputs, Mapping)
                  else self.inputs[selector])
        return Batch(inputs, pick(self.labels), pick(self.mask), pick(self.indices))

    def __iter__(self) -> Iterator[Any]:
        return iter((self.inputs, self.labels, self.indices))


def first_tensor(inputs: Inputs) -> torch.Tensor:
    """The tensor whose first dimension is the batch: the inputs, or a mapping's first value."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise DataError("a batch's inputs are an empty mapping; give at least one tensor (e.g. input_ids)")
        return next(iter(inputs.values()))
    return inputs


def as_batch(batch: Any) -> Batch:
    """Any batch a user may give, as a :class:`Batch`.

    Accepted: a Batch; a tensor (inputs only); a mapping of tensors (``labels`` in it, as Hugging Face
    collators put it, becomes the labels); ``(inputs,)``, ``(inputs, labels)`` or ``(inputs, labels,
    indices)``, where inputs may be a tensor or a mapping.

    Raises:
        DataError: for anything else, naming what was given.
    """
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, torch.Tensor):
        return Batch(batch)
    if isinstance(batch, Mapping):
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        return Batch(inputs, batch.get("labels"))
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3:
        inputs, labels, indices = (*batch, None, None)[:3]
        return Batch(inputs, labels, indices=indices)
    raise DataError(
        f"a batch must be inputs, (inputs, labels), (inputs, labels, indices) or a mapping of tensors; "
        f"got {type(batch).__name__}")


def model_logits(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model``'s logits for ``inputs``: called with the tensor, or with the mapping as keyword arguments.

    An output with a ``logits`` attribute or key (a Hugging Face ModelOutput) gives that. Shape ``[B, C]``
    or ``[B, P, C]``.
    """
    output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise DataError(f"{type(model).__name__} returned {type(output).__name__}, not logits; a model must "
                        "return a tensor of logits or an output with a .logits tensor")
    return logits


def counted_positions(mask: torch.Tensor | None, logits: torch.Tensor,
                      *aligned: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``logits`` and tensors aligned with it, flattened to one row per counted prediction.

    ``logits`` is ``[B, C]`` or ``[B, P, C]``; each of ``aligned`` has the same leading dimensions (another
    model's logits ``[..., C]``, labels ``[...]``) or is None. Positions where ``mask`` is False are left
    out, so a loss with batchmean semantics over the result averages over counted positions only.
    Example: ``student, teacher, labels = counted_positions(batch.mask, student, teacher, labels)``.
    """
    lead = logits.shape[:-1]
    if mask is None and len(lead) == 1:
        return (logits, *aligned)  # the common case: one prediction per sample, all count
    keep = mask.reshape(-1).bool() if mask is not None else None

    def flat(value: torch.Tensor | None) -> torch.Tensor | None:
        if value is None:
            return None
        if tuple(value.shape[:len(lead)]) != tuple(lead):
            raise DataError(f"a tensor of shape {tuple(value.shape)} does not line up with logits of shape "
                            f"{tuple(logits.shape)}; labels and mask need the logits' leading dimensions")
        rows = value.reshape(-1, *value.shape[len(lead):])
        return rows[keep] if keep is not None else rows

    if keep is not None and keep.shape[0] != lead.numel():
        raise DataError(f"the batch's mask has {keep.shape[0]} entries but the logits {tuple(logits.shape)} "
                        f"make {lead.numel()} predictions")
    return (flat(logits), *(flat(value) for value in aligned))
