"""Decoupled knowledge distillation (DKD): the soft loss split at the true class into TCKD and NCKD."""
from __future__ import annotations

from pydantic import Field
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.losses import decoupled_kd, hard_label_cross_entropy
from distillery.methods.base import METHODS, Needs, StepOutput
from distillery.methods.teacher_logits import SingleTeacherMethod, TeacherLogitsOptions


class DecoupledKDOptions(TeacherLogitsOptions):
    temperature: float = Field(4.0, gt=0.0, description="the temperature both distributions are softened at")
    ce_weight: float = Field(1.0, ge=0.0, description="weight of the hard-label term")
    tckd_weight: float = Field(1.0, ge=0.0, description="weight of the target-class term (the paper's alpha)")
    nckd_weight: float = Field(8.0, ge=0.0, description="weight of the non-target-class term (the paper's beta)")
    warmup_epochs: int = Field(20, ge=0, description="epochs over which the DKD term ramps in (0: none)")


@METHODS.register("dkd")
class DecoupledKD(SingleTeacherMethod):
    """Decoupled KD: ce_weight · CE + warm-up · T² · (tckd_weight · TCKD + nckd_weight · NCKD).

    The DKD term ramps in linearly, by min(epoch / warmup_epochs, 1), because at full weight
    from the first step a large ``nckd_weight`` swamps the cross-entropy of an untrained student.
    The trainer reports the epoch through :meth:`set_epoch` (counted from 1);
    ``warmup_epochs=0`` switches the ramp off. DKD needs the true labels: it splits every
    distribution at the target class.

    The paper calls the TCKD and NCKD weights alpha and beta; here ``alpha`` already means the
    hard-label weight of the other methods, hence the longer names. Defaults are the paper's
    CIFAR-100 recipe (resnet32x4 → resnet8x4; beta 6 for WRN and VGG pairs, 2 for resnet56 → 20).

    Reference: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    Example::

        method = DecoupledKD(student, teacher, temperature=4.0, nckd_weight=8.0, warmup_epochs=20)
    """

    Options = DecoupledKDOptions
    needs = Needs(teacher=True, labels="every_sample", teacher_logits=True,
                  data=frozenset({"images", "text_classification"}), generations=True)

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 4.0,
                 tckd_weight: float = 1.0, nckd_weight: float = 8.0, ce_weight: float = 1.0,
                 warmup_epochs: int = 20, label_smoothing: float = 0.0, standardize: bool = False,
                 hidden_weight: float = 0.0, hidden_map: dict[int, int] | None = None) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; the DKD paper uses 4")
        for name, value in (("tckd_weight", tckd_weight), ("nckd_weight", nckd_weight), ("ce_weight", ce_weight)):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {warmup_epochs}; 0 turns the warm-up off")
        super().__init__(student, teacher, standardize=standardize, hidden_weight=hidden_weight,
                         hidden_map=hidden_map)
        self.temperature = temperature
        self.tckd_weight = tckd_weight
        self.nckd_weight = nckd_weight
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        # Until the trainer says otherwise we are in the first epoch, as it counts them.
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch, counted from 1."""
        self.epoch = epoch

    @property
    def warmup_factor(self) -> float:
        if self.warmup_epochs == 0:
            return 1.0
        return min(self.epoch / self.warmup_epochs, 1.0)

    def step(self, batch: Batch) -> StepOutput:
        student_logits, teacher_logits, labels = (self.student_and_teacher_logits(batch) if batch.labels is not None
                                                  else (None, None, None))
        if labels is None or bool((labels < 0).any()):
            raise ConfigError(
                "method 'dkd' needs every sample's label: decoupled KD splits each distribution at the true class; "
                "use 'hinton' or 'dist' for an unlabeled or partly labelled transfer set"
            )
        soft_student, soft_teacher = self.soft_loss_inputs(student_logits, teacher_logits, labels)
        dkd = decoupled_kd(soft_student, soft_teacher, labels, self.temperature,
                           alpha=self.tckd_weight, beta=self.nckd_weight)
        hard = hard_label_cross_entropy(student_logits, labels, self.label_smoothing)
        loss = self.ce_weight * hard + self.warmup_factor * dkd
        return self.with_hidden_term(StepOutput(loss=loss, logits=student_logits,
                                                logs={"ce": hard.detach(), "kd": dkd.detach()},
                                                teacher_logits=teacher_logits))
