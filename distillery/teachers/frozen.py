"""Freezing a teacher so it gives fixed targets and never trains."""
from __future__ import annotations

from torch import nn


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to all its parameters; returns it.

    Eval mode matters as much as the gradients: dropout and batch-norm statistics in train
    mode would change the teacher's outputs from batch to batch and corrupt the targets.

    Example::

        teacher = freeze(teacher)
    """
    model.requires_grad_(False)
    model.eval()
    return model
