"""Several teachers acting as one: a weighted average of their probabilities or of their logits."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from distillery.errors import ConfigError, ModelError

COMBINE = ("probabilities", "logits")


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """One weight per teacher (equal when None), scaled to sum to 1; bad weights are a ConfigError."""
    weights = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"teacher_weights {weights} must be one non-negative weight per teacher ({count}), "
                          "not all zero")
    return [w / sum(weights) for w in weights]


class EnsembleTeacher(nn.Module):
    """A weighted ensemble of frozen teachers that outputs logits a distillation loss can use as is.

    ``combine="probabilities"`` is Hinton et al.'s rule: the ensemble's soft target is the weighted mean
    of each teacher's softmax at the distillation temperature T. To hand that to a loss that applies
    softmax(·/T) itself, the ensemble returns T · log(mean_i w_i softmax(z_i / T)), whose softmax at T is
    exactly that mean. ``combine="logits"`` averages the logits instead (one sharper distribution).

    Example::

        teacher = EnsembleTeacher([cnn, resnet], weights=[2, 1], combine="probabilities", temperature=4.0)
    """

    def __init__(self, teachers: Sequence[nn.Module], *, weights: Sequence[float] | None = None,
                 combine: str = "probabilities", temperature: float = 1.0) -> None:
        super().__init__()
        if not teachers:
            raise ConfigError("an ensemble needs at least one teacher")
        if combine not in COMBINE:
            raise ConfigError(f"unknown ensemble rule {combine!r}; choose one of: {', '.join(COMBINE)}")
        weights = normalized_weights(weights, len(teachers))
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.members = nn.ModuleList(teachers)
        self.register_buffer("weights", torch.tensor(weights), persistent=False)
        self.combine = combine
        self.temperature = temperature

    def extra_repr(self) -> str:
        # Part of the teacher-output cache's fingerprint: the same members combined otherwise give other targets.
        return f"combine={self.combine}, temperature={self.temperature}, weights={self.weights.tolist()}"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = [member(inputs) for member in self.members]
        if len({tuple(output.shape) for output in outputs}) != 1:
            raise ModelError(f"the ensemble's teachers disagree on output shapes {[tuple(o.shape[1:]) for o in outputs]}; "
                             "they must predict the same classes")
        stacked = torch.stack(outputs)                      # [teachers, batch, classes]
        weights = self.weights.to(stacked.dtype).view(-1, 1, 1)
        if self.combine == "logits":
            return (weights * stacked).sum(dim=0)
        log_probs = torch.log_softmax(stacked / self.temperature, dim=-1) + torch.log(weights)
        # log-sum-exp keeps the mean of probabilities exact where a teacher is very sure.
        return self.temperature * torch.logsumexp(log_probs, dim=0)
