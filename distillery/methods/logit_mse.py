"""Logit matching: the teacher's logits regressed by mean squared error, the high-temperature limit of Hinton's loss."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from distillery.data.batch import Batch
from distillery.losses import logit_mse
from distillery.methods.base import METHODS, StepOutput
from distillery.methods.teacher_logits import SingleTeacherMethod, TeacherLogitsOptions, check_alpha, hard_and_soft


class LogitMatchingOptions(TeacherLogitsOptions):
    label_weight: ClassVar[str | None] = "alpha"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label term; the logit term weighs "
                                                          "1 - alpha")


@METHODS.register("logit_mse")
class LogitMatching(SingleTeacherMethod):
    """alpha · CE(student, labels) + (1 − alpha) · MSE(student logits, teacher logits).

    As T grows, Hinton's T²-scaled soft-target gradient tends to that of matching zero-mean logits (Hinton et al.
    2015, section 2.1). With ``standardize=True`` it matches z-scored logits, ignoring each vector's offset and scale.

    Example::

        method = LogitMatching(student, teacher, alpha=0.1)
    """

    Options = LogitMatchingOptions
    gate_targets_by_labels = False  # a gated logit is a large negative number, not something to regress

    def __init__(self, student: nn.Module, teacher: nn.Module, *, alpha: float = 0.5, label_smoothing: float = 0.0,
                 standardize: bool = False, hidden_weight: float = 0.0,
                 hidden_map: dict[int, int] | None = None) -> None:
        check_alpha(alpha)
        super().__init__(student, teacher, standardize=standardize, hidden_weight=hidden_weight, hidden_map=hidden_map)
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def step(self, batch: Batch) -> StepOutput:
        student_logits, teacher_logits, labels = self.student_and_teacher_logits(batch)
        soft = logit_mse(*self.soft_loss_inputs(student_logits, teacher_logits, labels))
        loss, logs = hard_and_soft(student_logits, labels, soft, self.alpha, self.label_smoothing)
        return self.with_hidden_term(StepOutput(loss, student_logits, logs, teacher_logits))
