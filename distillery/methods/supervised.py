"""Training on labels alone: teachers and the student-from-scratch baseline."""
from __future__ import annotations

import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.losses import hard_label_cross_entropy
from distillery.methods.base import METHODS, Method, StepOutput


@METHODS.register("supervised")
class Supervised(Method):
    """Cross-entropy on the true labels, optionally label-smoothed.

    Example::

        method = Supervised(model, label_smoothing=0.1)
    """

    def __init__(self, student: nn.Module, *, label_smoothing: float = 0.0) -> None:
        super().__init__(student)
        self.label_smoothing = label_smoothing

    def step(self, inputs: torch.Tensor, labels: torch.Tensor | None, indices: torch.Tensor | None) -> StepOutput:
        if labels is None:
            raise ConfigError("supervised training needs labels; the training data has none")
        logits = self.student(inputs)
        loss = hard_label_cross_entropy(logits, labels, self.label_smoothing)
        return StepOutput(loss=loss, logits=logits, logs={"ce": loss.detach()})
