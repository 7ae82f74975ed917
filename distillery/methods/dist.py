"""DIST: distillation from a stronger teacher by matching the correlation of softened outputs, not the outputs."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.losses import dist_loss
from distillery.methods.base import METHODS, StepOutput
from distillery.methods.teacher_logits import SingleTeacherMethod, TeacherLogitsOptions, check_alpha, hard_and_soft


class DISTOptions(TeacherLogitsOptions):
    label_weight: ClassVar[str | None] = "alpha"
    temperature: float = Field(1.0, gt=0.0, description="the temperature both distributions are softened at")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label term; the relation loss "
                                                          "weighs 1 - alpha")
    beta: float = Field(1.0, ge=0.0, description="weight of the inter-class relation (per sample, across classes)")
    gamma: float = Field(1.0, ge=0.0, description="weight of the intra-class relation (per class, across the "
                                                  "batch)")


@METHODS.register("dist")
class DIST(SingleTeacherMethod):
    """DIST: alpha · CE + (1 − alpha) · T² · (beta · inter-class + gamma · intra-class) relation loss.

    Matches the Pearson correlation of the softened outputs, per sample across classes and per
    class across the batch, rather than the outputs themselves: a strong teacher's exact
    confidence is hard for a small student to reach, its ranking of classes is not. The
    default T = 1 is what the authors' code uses for its ``dist`` option; it also offers
    ``dist_t<T>`` options for other temperatures. The intra-class term compares samples, so
    use batches of more than one.

    Reference: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

    Example::

        method = DIST(student, teacher, temperature=1.0, beta=1.0, gamma=1.0, alpha=0.5)
    """

    Options = DISTOptions

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 1.0, beta: float = 1.0,
                 gamma: float = 1.0, alpha: float = 0.5, label_smoothing: float = 0.0,
                 standardize: bool = False, hidden_weight: float = 0.0,
                 hidden_map: dict[int, int] | None = None) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; DIST's default is 1")
        if beta < 0 or gamma < 0:
            raise ConfigError(f"beta and gamma must be >= 0, got beta={beta}, gamma={gamma}")
        check_alpha(alpha)
        super().__init__(student, teacher, standardize=standardize, hidden_weight=hidden_weight, hidden_map=hidden_map)
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.temperature = temperature
        self.beta = beta
        self.gamma = gamma

    def step(self, batch: Batch) -> StepOutput:
        student_logits, teacher_logits, labels = self.student_and_teacher_logits(batch)
        soft = dist_loss(*self.soft_loss_inputs(student_logits, teacher_logits, labels), self.temperature, self.beta,
                         self.gamma)
        loss, logs = hard_and_soft(student_logits, labels, soft, self.alpha, self.label_smoothing)
        return self.with_hidden_term(StepOutput(loss, student_logits, logs, teacher_logits))
