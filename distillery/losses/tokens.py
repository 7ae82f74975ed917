"""Token-level divergences between a student's and a teacher's next-token distributions, averaged over the
tokens that count.

Every function takes logits ``[..., V]`` (any leading dimensions: batch, positions), works in float32 whatever the
logits' dtype (bf16 logits lose too much in a log-softmax over a large vocabulary), and softens both
distributions at ``temperature``. ``token_loss`` applies a divergence over ``[B, P, V]`` in chunks of positions, so
a 49k vocabulary never holds more than a chunk's float32 copies, and averages over the positions a mask keeps.

Conventions (Agarwal et al. 2024, "On-Policy Distillation of Language Models", the GKD paper; TRL's GKDTrainer):
forward KL is KL(teacher ‖ student), mode-covering; reverse KL is KL(student ‖ teacher), mode-seeking; the
generalised Jensen–Shannon divergence with ``beta`` mixes M = beta · teacher + (1 − beta) · student and is
beta · KL(teacher ‖ M) + (1 − beta) · KL(student ‖ M), taken as forward KL at beta = 0 and reverse KL at beta = 1,
its two limits up to scale. Skew KL (Ko et al. 2024, DistiLLM) is KL(teacher ‖ alpha · teacher + (1 − alpha) ·
student). The KL family is multiplied by T², as Hinton's soft-target loss is, so its gradients keep their size
whatever T; total variation, a distance between probabilities, is not.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "total_variation")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities; a zero-probability term of p contributes 0."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight: float) -> torch.Tensor:
    """log(weight · p + (1 − weight) · q), computed stably in log space."""
    stacked = torch.stack([log_p + _log(weight), log_q + _log(1.0 - weight)])
    return torch.logsumexp(stacked, dim=0)


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0 else float("-inf")


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, kind: str = "forward_kl",
                     temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """The divergence ``kind`` at every position: logits ``[..., V]`` -> float32 ``[...]``.

    ``beta`` is the generalised JSD's (0 forward KL, 1 reverse KL), ``alpha`` skew KL's. Raises ValueError for an
    unknown kind, a temperature <= 0, or a weight outside [0, 1].

    Example: ``token_divergence(student(x).logits, teacher(x).logits, kind="jsd", beta=0.5)  # [B, P]``
    """
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not (0.0 <= beta <= 1.0 and 0.0 <= alpha <= 1.0):
        raise ValueError(f"beta and alpha are weights in [0, 1]; got beta={beta}, alpha={alpha}")
    student, teacher = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    if kind == "total_variation":
        return 0.5 * (teacher.exp() - student.exp()).abs().sum(dim=-1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        divergence = _kl(teacher, student)
    elif kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        divergence = _kl(student, teacher)
    elif kind == "jsd":
        mixture = _mixture(teacher, student, beta)
        divergence = beta * _kl(teacher, mixture) + (1.0 - beta) * _kl(student, mixture)
    else:  # skew_kl
        divergence = _kl(teacher, _mixture(teacher, student, alpha))
    return divergence * temperature ** 2


@torch.no_grad()
def forward_kl_with_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                             temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_divergence`'s forward KL (T² · KL(teacher ‖ student) at ``temperature``) per row ``[N]`` and its
    gradient with respect to the student's logits ``[N, V]`` (float32), written out: T · (q_T − p_T), with q_T and
    p_T the student's and the teacher's softmax at T (tested against autograd)."""
    student = _log_probs(student_logits, temperature)
    teacher = _log_probs(teacher_logits, temperature)
    teacher_probs = teacher.exp()
    loss = _kl(teacher, student) * temperature ** 2
    return loss, student.exp_().sub_(teacher_probs).mul_(temperature)


def token_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
               chunk_size: int = 1024, reduction: str = "mean",
               divergence: Callable[..., torch.Tensor] = token_divergence, **options) -> torch.Tensor:
    """A token divergence over ``[B, P, V]`` (or ``[N, V]``) logits, averaged over the positions ``mask`` keeps.

    Positions are flattened and processed ``chunk_size`` at a time. ``reduction="sum"`` returns the sum over counted
    positions instead: divide the sums of several micro-batches by their total count, and gradient accumulation
    averages exactly as one large batch would. ``options`` go to :func:`token_divergence` (kind, temperature, beta,
    alpha). A mask that keeps nothing gives 0 (with "mean"), not NaN.

    Example: ``loss = token_loss(student_logits, teacher_logits, batch.mask, kind="reverse_kl")``
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
    vocabulary = student_logits.shape[-1]
    student_rows = student_logits.reshape(-1, vocabulary)
    teacher_rows = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).bool()
        student_rows, teacher_rows = student_rows[keep], teacher_rows[keep]
    total = student_rows.new_zeros((), dtype=torch.float32)
    for start in range(0, len(student_rows), chunk_size):
        stop = start + chunk_size
        total = total + divergence(student_rows[start:stop], teacher_rows[start:stop], **options).sum()
    if reduction == "sum":
        return total
    return total / max(len(student_rows), 1)
