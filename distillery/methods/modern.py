"""Logit methods after Hinton: decoupled KD and DIST. Both take ``standardize``, ``hidden_weight`` and
``hidden_map`` like ``hinton``."""
from __future__ import annotations

import torch
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.losses import decoupled_kd, dist_loss, hard_label_cross_entropy
from distillery.methods.base import METHODS, StepOutput
from distillery.methods.soft_targets import SingleTeacherMethod, TeacherLogitMethod


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

    def logit_step(self, batch: Batch) -> StepOutput:
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
        return StepOutput(loss=loss, logits=student_logits, logs={"ce": hard.detach(), "kd": dkd.detach()},
                          teacher_logits=teacher_logits)


@METHODS.register("dist")
class DIST(TeacherLogitMethod):
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

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 1.0, beta: float = 1.0,
                 gamma: float = 1.0, alpha: float = 0.5, label_smoothing: float = 0.0,
                 standardize: bool = False, hidden_weight: float = 0.0,
                 hidden_map: dict[int, int] | None = None) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; DIST's default is 1")
        if beta < 0 or gamma < 0:
            raise ConfigError(f"beta and gamma must be >= 0, got beta={beta}, gamma={gamma}")
        super().__init__(student, teacher, alpha=alpha, label_smoothing=label_smoothing, standardize=standardize,
                         hidden_weight=hidden_weight, hidden_map=hidden_map)
        self.temperature = temperature
        self.beta = beta
        self.gamma = gamma

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return dist_loss(student_logits, teacher_logits, self.temperature, self.beta, self.gamma)
