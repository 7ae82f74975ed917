"""Token-level distillation of causal language models: a divergence between the teacher's and the student's
next-token distributions at every counted position, plus the next-token cross-entropy on the text."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import nn

from distillery.data.batch import Batch, counted_positions, model_logits
from distillery.errors import ConfigError, ModelError
from distillery.teachers.token_targets import TargetSpec
from distillery.losses import hard_label_cross_entropy
from distillery.losses.tokens import DIVERGENCES, token_loss
from distillery.losses.sampled import MAX_SAMPLES, log_weights, teacher_samples
from distillery.losses.topk import teacher_top_k
from distillery.methods.base import METHODS, Method, MethodOptions, Needs, StepOutput
from distillery.methods.hidden_states import hidden_state_match
from distillery.methods.on_policy import student_continuations
from distillery.methods.projected_tokens import (
    TokenLossSettings,
    check_target_ids,
    projected_token_loss,
    sparse_divergence,
    teacher_source,
)
from distillery.models.lm_head import split_causal_lm


class TokenDistillationOptions(MethodOptions):
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "total_variation"] = Field(
        "forward_kl", description="the divergence between the teacher's and student's next-token distributions")
    temperature: float = Field(1.0, gt=0.0, description="the temperature both distributions are softened at")
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="weight of the cross-entropy on the text")
    beta: float = Field(0.5, ge=0.0, description="with divergence jsd: the mixture's teacher weight")
    skew: float = Field(0.1, ge=0.0, le=1.0, description="with skew_kl: the teacher's share of the skewed mixture")
    top_k: Optional[int] = Field(None, ge=1, description="learn the teacher's top k next-token probabilities and one "
                                                         "bucket for the rest, computed once and memory-mapped "
                                                         "(teacher_cache auto) or live (off)")
    teacher_samples: Optional[int] = Field(
        None, ge=1, le=MAX_SAMPLES, description="learn from this many tokens a position drawn from the teacher's "
                                                "distribution at the temperature, with their counts: an unbiased "
                                                "estimate of the forward KL's gradient (Anshumann et al. 2025), "
                                                "cached like top_k")
    on_policy: float = Field(0.0, ge=0.0, le=1.0, description="GKD's lambda: the share of batches whose "
                                                              "continuations the student samples and the teacher "
                                                              "scores")
    sample_temperature: float = Field(1.0, ge=0.0, description="with on_policy: the student's sampling temperature "
                                                               "(0 greedy)")
    sample_tokens: Optional[int] = Field(None, ge=1, description="with on_policy: the most tokens the student writes "
                                                                 "(to the block's end)")
    prompt_tokens: Optional[int] = Field(None, ge=1, description="with on_policy on packed text: the tokens kept as "
                                                                 "the prompt (half the block)")
    hidden_weight: float = Field(0.0, ge=0.0, description="weight of hidden-state matching through learned "
                                                          "projections (0: off)")
    project_in_chunks: bool = Field(
        True, description="project the student's (and a live teacher's) last hidden states to the vocabulary a chunk "
                          "of counted positions at a time, never holding the batch's logits; models that cannot be "
                          "split into body and output projection (checked on the first batch) use their logits")
    hidden_map: Optional[dict[int, int]] = Field(
        None, description="with hidden_weight: student -> teacher hidden-state index (default: each student block "
                          "to the teacher block it started from)")

    def teacher_targets(self, seed: int = 0, storage: str = "float32") -> TargetSpec | None:
        if self.top_k is not None:
            return TargetSpec.top_k(self.top_k, storage)
        if self.teacher_samples is not None:
            return TargetSpec.samples(self.teacher_samples, self.temperature, seed)
        return None


@METHODS.register("token_kd")
class TokenDistillation(Method):
    """alpha · CE(student, next tokens) + (1 − alpha) · divergence(teacher ‖ student) over counted tokens.

    ``divergence`` is one of :data:`~distillery.losses.tokens.DIVERGENCES` (forward_kl, reverse_kl, jsd with
    ``beta``, skew_kl with ``skew``, total_variation), softened at ``temperature``, in float32 and in chunks of
    positions (:func:`~distillery.losses.tokens.token_loss`). Batches carry ``input_ids`` ``[B, L]``, labels
    ``[B, L]`` and the mask of counted predictions; the teacher runs live, frozen, in eval mode, or its top-k
    targets are read by block index (``top_k`` with :meth:`use_cached_targets`).

    Sampled targets (``teacher_samples`` n, Anshumann et al. 2025): n tokens a position drawn from the teacher's
    distribution at ``temperature``, learned as the empirical distribution of the draws
    (:mod:`distillery.losses.sampled`): the gradient is the forward KL's on average. Cached like top-k, or drawn
    live (from the global generator) where the teacher runs.

    On-policy distillation (GKD, Agarwal et al. 2024): with probability ``on_policy`` (their lambda) a training
    batch's continuations are sampled from the student (after each block's prompt, or its first ``prompt_tokens``
    of packed text, default half the block; ``sample_tokens`` new tokens at most, at ``sample_temperature``) and the
    teacher scores the student's own text; such a batch has no hard-label term.

    Hidden-state matching (``hidden_weight`` > 0): student hidden states projected onto the teacher's
    (:class:`~distillery.methods.hidden_states.HiddenStateMatch`, ``hidden_map`` student -> teacher hidden-state
    index, by default each student block to the teacher block it was started from), weighted into the loss.

    Example: ``TokenDistillation(student, teacher, divergence="reverse_kl", alpha=0.0)``
    """

    Options = TokenDistillationOptions
    needs = Needs(teacher=True, data=frozenset({"next_token"}))

    def __init__(self, student: nn.Module, teacher: nn.Module, *, divergence: str = "forward_kl",
                 temperature: float = 1.0, alpha: float = 0.0, beta: float = 0.5, skew: float = 0.1,
                 top_k: int | None = None, teacher_samples: int | None = None, on_policy: float = 0.0, sample_temperature: float = 1.0,
                 sample_tokens: int | None = None, prompt_tokens: int | None = None, hidden_weight: float = 0.0,
                 hidden_map: dict[int, int] | None = None, chunk_size: int = 1024,
                 project_in_chunks: bool = True) -> None:
        super().__init__(student)
        if not 0.0 <= on_policy <= 1.0:
            raise ConfigError(f"on_policy is the share of batches the student writes, in [0, 1]; got {on_policy}")
        if divergence not in DIVERGENCES:
            raise ConfigError(f"divergence {divergence!r} is not one of {', '.join(DIVERGENCES)}")
        if top_k is not None and (divergence not in ("forward_kl", "reverse_kl") or temperature != 1.0):
            raise ConfigError(f"top_k targets are the teacher's probabilities at T = 1 with one bucket for the rest: "
                              f"they take divergence forward_kl or reverse_kl at temperature 1, not {divergence} at "
                              f"{temperature}")
        if teacher_samples is not None and (top_k is not None or divergence != "forward_kl"):
            raise ConfigError("teacher_samples estimates the forward KL's gradient: it takes divergence forward_kl "
                              f"and no top_k, not {divergence}" + (f" with top_k {top_k}" if top_k else ""))
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"alpha weighs the cross-entropy on the text and must be in [0, 1), got {alpha}; "
                              "alpha = 1 leaves the teacher no weight (train without distill: instead)")
        self.add_teacher("teacher", teacher)
        self.divergence_options = {"kind": divergence, "temperature": temperature, "beta": beta, "alpha": skew}
        self.alpha = alpha
        self.chunk_size = chunk_size
        self.top_k = top_k
        self.teacher_samples = teacher_samples
        self.cached = None  # a TokenTargets store, read by block index instead of running the teacher
        self.on_policy = on_policy
        self.sampling = {"temperature": sample_temperature, "max_new_tokens": sample_tokens,
                         "prompt_tokens": prompt_tokens}
        self.hidden_weight = hidden_weight
        self.hidden = hidden_state_match(student, teacher, hidden_weight, hidden_map)
        self.project_in_chunks = project_in_chunks
        # Student and teacher as body and output projection (False: cannot be split), decided on first use.
        self._student_split = self._teacher_split = None
        self.shared_rows: int | None = None  # heads of different sizes: the rows their one tokenizer uses

    @property
    def sparse(self) -> bool:
        """Whether the teacher is seen through top-k or sampled targets rather than its whole distribution."""
        return self.top_k is not None or self.teacher_samples is not None or self.cached is not None

    def use_shared_rows(self, rows: int) -> None:
        """Compare the teacher and the student over their first ``rows`` output rows only: one tokenizer of ``rows``
        tokens, and output layers padded beyond it to different sizes (Qwen-style 151,936 against 152,064 rows). The
        padding rows, which no text ever needs, are left out of both distributions; the student's hard-label
        cross-entropy keeps its whole head."""
        self.shared_rows = rows

    def fsdp_refusal(self) -> str | None:
        if self.on_policy > 0:
            return "on_policy: each process's student writes text of its own length, so their forwards differ"
        return None

    def use_cached_targets(self, targets) -> None:
        """Read the teacher's top-k or sampled targets by block index (a
        :class:`~distillery.teachers.token_targets.TokenTargets` of this method's kind) instead of running the
        teacher."""
        self.cached = targets

    def step(self, batch: Batch) -> StepOutput:
        # GKD's coin, from the global generator (restored on resume): this batch's text is the student's own.
        own_text = self.on_policy > 0 and self.training and float(torch.rand(())) < self.on_policy
        if own_text:
            if "position_ids" in batch.inputs:
                raise ConfigError("on_policy samples one conversation a block, but these blocks pack several; set "
                                  "data.pack: false")
            length = batch.inputs["input_ids"].shape[1]
            prompt = self.sampling["prompt_tokens"] or length // 2
            batch = student_continuations(self.student, batch, prompt_tokens=prompt,
                                          max_new_tokens=self.sampling["max_new_tokens"],
                                          temperature=self.sampling["temperature"])
        if self.project_in_chunks and self.hidden is None and self.shared_rows is None:
            projected = self._projected_step(batch, cached=not own_text)
            if projected is not None:
                return projected
        (student_logits, student_states), (teacher_logits, teacher_states) = self._outputs(batch, live=not own_text)
        compared, teacher_compared = self._shared(student_logits), self._shared(teacher_logits)
        if self.sparse:
            soft = self._sparse_loss(compared, batch, cached=not own_text, teacher_logits=teacher_compared)
        else:
            self._check_vocabulary(teacher_compared.shape[-1], compared.shape[-1])
            soft = token_loss(compared, teacher_compared, batch.mask, chunk_size=self.chunk_size,
                              **self.divergence_options)
        logs = {"kd": soft.detach()}
        loss = (1.0 - self.alpha) * soft
        if self.hidden is not None:
            hidden = self.hidden(student_states, teacher_states, batch.mask)
            loss = loss + self.hidden_weight * hidden
            logs["hidden"] = hidden.detach()
        if self.alpha > 0 and batch.labels is not None:
            logits, labels = counted_positions(batch.mask, student_logits, batch.labels)
            hard = hard_label_cross_entropy(logits.float(), labels)  # at T = 1, positions labelled -100 left out
            loss = loss + self.alpha * hard
            logs["ce"] = hard.detach()
        return StepOutput(loss, student_logits, logs, teacher_logits=teacher_logits)

    def _shared(self, logits: torch.Tensor | None) -> torch.Tensor | None:
        return logits[..., :self.shared_rows] if logits is not None and self.shared_rows is not None else logits

    def _projected_step(self, batch: Batch, cached: bool) -> StepOutput | None:
        """The step with the vocabulary projected a chunk of counted positions at a time
        (:mod:`~distillery.methods.projected_tokens`); None where the student cannot be split or the batch has no
        per-position mask."""
        if batch.mask is None or batch.mask.dim() < 2 or not isinstance(batch.inputs, dict):
            return None
        if self._student_split is None:
            self._student_split = split_causal_lm(self.student, batch.inputs) or False
        if not self._student_split:
            return None
        targets = self.cached if cached else None
        if targets is None and self._teacher_split is None:  # split only when the teacher runs: it may be absent
            self._teacher_split = split_causal_lm(self.teacher, batch.inputs) or False
        source = teacher_source(self.teacher, self._teacher_split or None, batch, cached=targets,
                                sparse=self._sparse_targets if self.sparse else None)
        hidden = self._student_split.hidden_states(batch.inputs)[batch.mask.bool()]
        settings = TokenLossSettings(self.divergence_options, self.alpha, self.chunk_size)
        loss, logs = projected_token_loss(self._student_split, source, batch, hidden, settings)
        return StepOutput(loss, None, logs)

    def _sparse_targets(self, teacher_logits: torch.Tensor) -> tuple:
        """The live teacher's logits ``[..., V]`` as this method's sparse targets: ``("top_k", values, ids, tail)`` or
        ``("samples", log weights, ids, tail)`` (draws from the global generator, restored on resume)."""
        if self.top_k is not None:
            return ("top_k", *teacher_top_k(teacher_logits, self.top_k))
        counts, ids = teacher_samples(teacher_logits, self.teacher_samples,
                                      temperature=self.divergence_options["temperature"])
        weights = log_weights(counts)
        return "samples", weights, ids, torch.full(weights.shape[:-1], float("-inf"), device=weights.device)

    def _outputs(self, batch: Batch, live: bool) -> tuple[tuple, tuple]:
        """``(logits, hidden states)`` of the student and of the teacher; the teacher's are None where its cached
        targets stand in for it (a corpus batch, ``live`` False, and no hidden states to match)."""
        if self.hidden is None:
            student = (model_logits(self.student, batch.inputs), None)
            if self.cached is not None and not live:
                return student, (None, None)
            with torch.no_grad():
                return student, (model_logits(self.teacher, batch.inputs), None)
        student_output = self.student(**batch.inputs, output_hidden_states=True)
        with torch.no_grad():
            teacher_output = self.teacher(**batch.inputs, output_hidden_states=True)
        return ((student_output.logits, student_output.hidden_states),
                (teacher_output.logits, teacher_output.hidden_states))

    def _sparse_loss(self, student_logits: torch.Tensor, batch: Batch, cached: bool,
                     teacher_logits: torch.Tensor | None) -> torch.Tensor:
        """The divergence against the teacher's top-k or sampled targets (``cached`` for the corpus's blocks, else
        from the live teacher), averaged over the counted positions, a chunk of positions at a time."""
        if cached and self.cached is not None:
            kind = self.cached.kind
            targets = [part.to(student_logits.device) for part in self.cached[batch.indices]]
        else:
            if teacher_logits is None:
                with torch.no_grad():
                    teacher_logits = model_logits(self.teacher, batch.inputs)
            self._check_vocabulary(teacher_logits.shape[-1], student_logits.shape[-1])
            kind, *targets = self._sparse_targets(teacher_logits)
        student, *targets = counted_positions(batch.mask, student_logits, *targets)
        check_target_ids(targets[1], student.shape[-1])
        total = student.new_zeros((), dtype=torch.float32)
        for start in range(0, len(student), self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            total = total + sparse_divergence(student[rows], (kind, *(part[rows] for part in targets)),
                                              self.divergence_options).sum()
        return total / max(len(student), 1)

    @staticmethod
    def _check_vocabulary(teacher: int, student: int) -> None:
        if teacher != student:
            raise ModelError(f"the teacher predicts {teacher} tokens and the student {student}; both need the same "
                             "vocabulary")
