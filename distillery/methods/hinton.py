"""Hinton distillation: soft targets at temperature T (KL · T²) plus hard labels at T = 1."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.losses import soft_target_kl
from distillery.methods.base import METHODS, StepOutput
from distillery.methods.teacher_logits import SingleTeacherMethod, TeacherLogitsOptions, check_alpha, hard_and_soft


class HintonOptions(TeacherLogitsOptions):
    label_weight: ClassVar[str | None] = "alpha"
    temperature: float = Field(4.0, gt=0.0, description="the temperature both distributions are softened at")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label term; the soft term weighs "
                                                          "1 - alpha")


@METHODS.register("hinton")
class HintonDistillation(SingleTeacherMethod):
    """alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(teacher / T) ‖ softmax(student / T)).

    The hard-label term is at T = 1, and the student predicts at T = 1. ``standardize=True`` is KD with logit
    standardisation (Sun et al. 2024; their CIFAR-100 recipe: T = 2, CE weight 0.1, KD weight 9).

    Reference: Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015.

    Example::

        method = HintonDistillation(student, teacher, temperature=4.0, alpha=0.1)
    """

    Options = HintonOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.5,
                 label_smoothing: float = 0.0, standardize: bool = False, hidden_weight: float = 0.0,
                 hidden_map: dict[int, int] | None = None) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; typical values are 1 to 20")
        check_alpha(alpha)
        super().__init__(student, teacher, standardize=standardize, hidden_weight=hidden_weight, hidden_map=hidden_map)
        self.temperature = temperature
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def step(self, batch: Batch) -> StepOutput:
        student_logits, teacher_logits, labels = self.student_and_teacher_logits(batch)
        soft = soft_target_kl(*self.soft_loss_inputs(student_logits, teacher_logits, labels), self.temperature)
        loss, logs = hard_and_soft(student_logits, labels, soft, self.alpha, self.label_smoothing)
        return self.with_hidden_term(StepOutput(loss, student_logits, logs, teacher_logits))
