"""What every method shares: the step result, the frozen-teacher rule, the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from distillery.data.batch import Batch
from distillery.registry import Registry
from distillery.teachers import freeze

METHODS: Registry = Registry("method")


@dataclass
class StepOutput:
    """One training step's result: the loss to minimise, the student's logits, and loss parts to log.

    ``teacher_logits``, where the step used a teacher's, lets a non-finite loss be traced to its source.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_logits: torch.Tensor | None = None


class Method(nn.Module):
    """A student plus whatever a method adds to train it.

    Subclasses implement :meth:`step`. Teachers given to :meth:`add_teacher` are frozen
    and stay in eval mode even when the method is put in train mode, so the trainer can
    call ``method.train()`` without knowing which parts are teachers.
    """

    uses_feature_hooks = False  # True where step() reads the student's features through forward hooks
    name = ""  # the registered name (set by create_method), for messages

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self._teacher_names: list[str] = []

    def add_teacher(self, name: str, teacher: nn.Module) -> None:
        self.add_module(name, freeze(teacher))
        self._teacher_names.append(name)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        """The submodules added with :meth:`add_teacher`: frozen, so a saved training state leaves them out."""
        return tuple(self._teacher_names)

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        for name in self._teacher_names:
            getattr(self, name).eval()
        return self

    def peer_models(self) -> dict[str, nn.Module]:
        """Models trained beside the student (online methods), by name; each is validated, kept at its best
        epoch and saved on its own. They are trainable, unlike teachers, so they are in :meth:`trainable_parameters`.
        """
        return {}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def set_epoch(self, epoch: int) -> None:
        """Told at the start of every epoch (counted from 1); methods with schedules override it."""

    def step(self, batch: Batch) -> StepOutput:
        """One training step on ``batch`` (see :class:`~distillery.data.batch.Batch`: inputs a tensor or a
        mapping of tensors, labels per sample or per position, a mask of what counts, sample indices)."""
        raise NotImplementedError
