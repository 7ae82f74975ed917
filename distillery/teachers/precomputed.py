"""Teacher outputs computed once, when every epoch shows the teacher the same inputs."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from distillery.eval.metrics import eval_mode


@torch.no_grad()
def precompute_logits(teacher: nn.Module, batches: Iterable, size: int) -> torch.Tensor:
    """The teacher's logits for every sample, placed by sample index: a [size, classes] CPU tensor.

    ``batches`` yields (inputs, labels, indices) as a BatchIterator does. Valid only while the
    transfer pipeline is deterministic (no random augmentation): then the teacher would give the
    same outputs every epoch, and running it once instead of every epoch is most of a
    distillation run's cost saved.

    Example::

        logits = precompute_logits(teacher, BatchIterator(train, 512, transform=normalizer), len(train))
    """
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    table: torch.Tensor | None = None
    with eval_mode(teacher):
        for inputs, _, indices in batches:
            logits = teacher(inputs.to(device)).float().cpu()
            if table is None:
                table = torch.full((size, logits.shape[1]), float("nan"))
            table[indices] = logits
    if table is None or torch.isnan(table).any():
        raise ValueError("the batches did not cover every sample index once")  # a bug, not a user error
    return table
