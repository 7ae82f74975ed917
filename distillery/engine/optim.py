"""Optimisers and learning-rate schedules by name."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from distillery.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")


def build_optimizer(parameters: Iterable[torch.nn.Parameter], name: str, *, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW or SGD with Nesterov momentum.

    Example::

        optimizer = build_optimizer(method.trainable_parameters(), "adamw", lr=1e-3, weight_decay=5e-4)
    """
    parameters = list(parameters)
    if not parameters:
        raise ConfigError("the model has no trainable parameters")
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: cosine decay to zero, one-cycle, or constant.

    Example::

        scheduler = build_scheduler(optimizer, "cosine", total_steps=epochs * len(batches))
    """
    total_steps = max(1, total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    if name == "onecycle":
        max_lrs = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps + 1)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ConfigError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
