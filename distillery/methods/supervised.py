"""Training on labels alone: teachers and the student-from-scratch baseline."""
from __future__ import annotations

from typing import Any

from torch import nn

from distillery.data.batch import Batch, counted_positions, model_logits
from distillery.errors import ConfigError
from distillery.losses import hard_label_cross_entropy
from distillery.methods.base import METHODS, BuildContext, Method, MethodOptions, Needs, StepOutput


class SupervisedOptions(MethodOptions):
    """None of its own: train.label_smoothing smooths its labels."""

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        return {"label_smoothing": context.label_smoothing}


@METHODS.register("supervised")
class Supervised(Method):
    """Cross-entropy on the true labels, optionally label-smoothed.

    Example::

        method = Supervised(model, label_smoothing=0.1)
    """

    Options = SupervisedOptions
    needs = Needs(teacher=False, labels="required")

    def __init__(self, student: nn.Module, *, label_smoothing: float = 0.0) -> None:
        super().__init__(student)
        self.label_smoothing = label_smoothing

    def step(self, batch: Batch) -> StepOutput:
        if batch.labels is None:
            raise ConfigError("supervised training needs labels; the training data has none")
        logits, labels = counted_positions(batch.mask, model_logits(self.student, batch.inputs), batch.labels)
        loss = hard_label_cross_entropy(logits, labels, self.label_smoothing)
        return StepOutput(loss=loss, logits=logits, logs={"ce": loss.detach()})
