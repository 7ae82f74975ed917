"""Online distillation: a teacher trained from scratch on labels while the student distils from it."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from torch import nn

from distillery.data.batch import Batch
from distillery.methods.base import METHODS, BuildContext, StepOutput
from distillery.methods.peers import OnlineMethod, PeerOptions, _needs_labels, model_spec


class OnlineDistillationOptions(PeerOptions):
    teacher_model: dict[str, Any] = Field(..., description="model spec (like model:) of the teacher trained from "
                                                           "scratch beside the student")
    temperature: float = Field(4.0, gt=0.0, description="the temperature of the teacher's soft targets")

    @field_validator("teacher_model")
    @classmethod
    def _teacher_model_has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        return model_spec(value)

    def peer_specs(self) -> list[dict[str, Any]]:
        return [self.teacher_model]

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        teacher_model = context.new_model(self.teacher_model, "teacher_model", 1)
        return {**super().keywords(context), "teacher_model": teacher_model, "label_smoothing": context.label_smoothing}


@METHODS.register("online")
class OnlineDistillation(OnlineMethod):
    """A teacher trained from scratch on labels while the student distils from its current predictions.

    The teacher minimises ``CE(labels)``, the student
    ``alpha · CE + (1 − alpha) · T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` with the teacher's
    logits detached, so the student never pulls the teacher towards itself.
    The teacher is a peer named ``teacher``: it is saved and evaluated on its own.

    Example::

        method = OnlineDistillation(student, teacher_model=cnn((1, 8, 8), 10), temperature=4.0, alpha=0.5)
    """

    Options = OnlineDistillationOptions

    def __init__(self, student: nn.Module, *, teacher_model: nn.Module, temperature: float = 4.0,
                 alpha: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__(student, {"teacher": teacher_model}, temperature=temperature, alpha=alpha,
                         label_smoothing=label_smoothing)

    def step(self, batch: Batch) -> StepOutput:
        labels = _needs_labels(batch.labels, "online")
        logits = self.all_logits(batch.inputs)
        losses = {"student": self.model_loss(logits["student"], labels, [logits["teacher"]]),
                  "teacher": self.model_loss(logits["teacher"], labels, [])}
        return self.combine(losses, logits["student"])
