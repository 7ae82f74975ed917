"""What the methods that learn from one teacher's logits share: where those logits come from (the teacher live, a
table by sample index, or the same passes as the hidden states), standardisation, gating by the true class, and
their common options. The methods themselves are one file each: hinton, logit_mse, dkd, dist."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from distillery.data.batch import Batch, counted_positions, model_logits
from distillery.errors import ConfigError, ModelError
from pydantic import Field

from distillery.losses import hard_label_cross_entropy, standardize_logits
from distillery.methods.base import BuildContext, Method, MethodOptions, Needs, StepOutput
from distillery.methods.hidden_states import hidden_state_match


class TeacherLogitsOptions(MethodOptions):
    """The options every method on one teacher's logits takes."""

    standardize: bool = Field(False, description="z-score both logit vectors per sample before the soft loss")
    hidden_weight: float = Field(0.0, ge=0.0, description="on transformers: weight of hidden-state matching through "
                                                          "learned projections (0: off)")
    hidden_map: Optional[dict[int, int]] = Field(
        None, description="with hidden_weight: student -> teacher hidden-state index (0 embeddings, i block i; "
                          "default: each student block to the teacher block it started from)")

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        return {**super().keywords(context), "label_smoothing": context.label_smoothing}


class SingleTeacherMethod(Method):
    """A student that learns from one frozen teacher's logits, optionally z-scored first.

    With ``standardize`` on, both logit vectors are z-scored per sample before the soft loss
    (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024), never before
    the hard-label cross-entropy: the student's raw logits are what it predicts with.

    With ``hidden_weight`` > 0 (Hugging Face transformer student and teacher, e.g. text classifiers), the loss
    adds ``hidden_weight`` times the mean squared error between projected student hidden states and the teacher's
    over the tokens that are not padding (:class:`~distillery.methods.hidden_states.HiddenStateMatch`;
    ``hidden_map`` student -> teacher hidden-state index, default every k-th block's). Subclasses implement
    :meth:`logit_step`.
    """

    # Merged teachers of different class sets can restrict their targets to the true class's teachers;
    # that suits losses on softened probabilities, not matching raw logits (see LogitMatching).
    gate_targets_by_labels = True
    needs = Needs(teacher=True, teacher_logits=True, data=frozenset({"images", "text_classification"}),
                  generations=True)

    def __init__(self, student: nn.Module, teacher: nn.Module, *, standardize: bool = False,
                 hidden_weight: float = 0.0, hidden_map: dict[int, int] | None = None) -> None:
        super().__init__(student)
        self.add_teacher("teacher", teacher)
        self.standardize = standardize
        self.precomputed_teacher_logits = None
        self.hidden_weight = hidden_weight
        self.hidden = hidden_state_match(student, teacher, hidden_weight, hidden_map)
        self._hidden_loss: torch.Tensor | None = None

    def use_precomputed_teacher_logits(self, logits) -> None:
        """Look the teacher's logits up by sample index instead of running it (deterministic transfer sets).

        ``logits`` is anything indexable by a tensor of indices: a tensor, or a cache's LogitTable.
        """
        if self.hidden is not None:
            raise ConfigError("hidden-state matching needs the teacher's hidden states, which the teacher cache does "
                              "not keep; set distill.teacher_cache: off")
        self.precomputed_teacher_logits = logits

    def with_hidden_term(self, output: StepOutput) -> StepOutput:
        """``output`` plus ``hidden_weight`` times the hidden-state term of this step's passes, when it is on."""
        if self._hidden_loss is not None:
            output.loss = output.loss + self.hidden_weight * self._hidden_loss
            output.logs["hidden"] = self._hidden_loss.detach()
            self._hidden_loss = None
        return output

    def student_and_teacher_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The student's and teacher's logits and the labels, one row per counted prediction (see
        :func:`~distillery.data.batch.counted_positions`): ``[N, C]``, ``[N, C]``, ``[N]`` or None. With hidden-state
        matching on, the same forward passes give the hidden states, and :meth:`step` adds their term."""
        self._hidden_loss = None
        if self.hidden is not None:
            student_logits, teacher_logits = self._with_hidden_states(batch)
        elif self.precomputed_teacher_logits is not None:
            if batch.indices is None:
                raise ValueError("precomputed teacher logits need the batches' sample indices")
            teacher_logits = self.precomputed_teacher_logits[batch.indices].to(batch.device, torch.float32)
            student_logits = model_logits(self.student, batch.inputs)
        else:
            with torch.no_grad():
                teacher_logits = model_logits(self.teacher, batch.inputs)
            student_logits = model_logits(self.student, batch.inputs)
        if teacher_logits.shape != student_logits.shape:
            raise ModelError(
                f"teacher outputs {tuple(teacher_logits.shape[1:])} but student outputs "
                f"{tuple(student_logits.shape[1:])}; both must predict the same classes"
            )
        return counted_positions(batch.mask, student_logits, teacher_logits, batch.labels)

    def _with_hidden_states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both models' logits, keeping the hidden-state term of the same passes (over the tokens that are not
        padding) for :meth:`step`."""
        if not isinstance(batch.inputs, Mapping):
            raise ConfigError("hidden_weight needs transformer inputs (input_ids and attention_mask)")
        student_output = self.student(**batch.inputs, output_hidden_states=True)
        with torch.no_grad():
            teacher_output = self.teacher(**batch.inputs, output_hidden_states=True)
        self._hidden_loss = self.hidden(student_output.hidden_states, teacher_output.hidden_states,
                                        batch.inputs.get("attention_mask"))
        return student_output.logits, teacher_output.logits

    def soft_loss_inputs(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits the soft loss compares: z-scored when ``standardize`` is on, then, for merged
        teachers of different class sets, gated by the true class (see LabelSpaceMerge.gate_by_labels).

        Gating comes last: z-scoring a vector that already holds the gate's large negative values would
        squash the kept classes together and hand the gated ones a share of the target.
        """
        if self.standardize:
            student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
        if labels is not None and self.gate_targets_by_labels and hasattr(self.teacher, "gate_by_labels"):
            teacher_logits = self.teacher.gate_by_labels(teacher_logits, labels)
        return student_logits, teacher_logits


def check_alpha(alpha: float) -> None:
    """alpha weighs the hard-label term, and the soft term 1 − alpha: at 1 the teacher would have no weight."""
    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"alpha must be in [0, 1), got {alpha}; it weights the hard-label term, and at 1 the "
                          "teacher's term has no weight (train from labels alone with `distillery train`)")


def hard_and_soft(student_logits: torch.Tensor, labels: torch.Tensor | None, soft: torch.Tensor, alpha: float,
                  label_smoothing: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha · CE(student, labels) + (1 − alpha) · soft, and its parts to log.

    Samples without a label (-1) add nothing to the hard term; a batch without labels at all (None) has none, so
    its loss is (1 − alpha) · soft (a transfer set without labels therefore takes alpha = 0).
    """
    logs = {"kd": soft.detach()}
    loss = (1.0 - alpha) * soft
    if labels is not None:
        hard = hard_label_cross_entropy(student_logits, labels, label_smoothing)
        logs["ce"] = hard.detach()
        loss = loss + alpha * hard
    return loss, logs
