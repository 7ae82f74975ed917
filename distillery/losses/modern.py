"""Logit losses after Hinton: decoupled KD, DIST's correlation matching, logit standardisation.

Every function takes (batch, classes) logits, like ``soft_target_kl``, and returns a scalar
averaged over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def decoupled_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float, alpha: float = 1.0, beta: float = 8.0) -> torch.Tensor:
    """Decoupled KD: T² · (alpha · TCKD + beta · NCKD), averaged over the batch.

    TCKD is the KL divergence between the teacher's and the student's binary distributions
    (target class, all other classes); NCKD is the KL divergence between their distributions
    over the non-target classes alone, renormalised. Classical KD is exactly
    TCKD + (1 − p_target^teacher) · NCKD per sample; DKD frees NCKD from that weight, which
    shrinks for exactly the samples the teacher is sure of.

    The non-target distribution is computed from the non-target logits themselves (the target
    column removed), and the binary one from log-sum-exps, so nothing takes the log of a
    probability that underflowed to 0 — the reference code's ``log(sum(softmax))`` does.

    Reference: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    Example::

        loss = decoupled_kd(student(x), teacher(x).detach(), y, temperature=4.0, alpha=1.0, beta=8.0)
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape[1] < 2:
        raise ValueError("decoupled KD needs at least two classes: it splits target from non-target")
    target_mask = torch.zeros_like(student_logits, dtype=torch.bool).scatter_(1, labels.view(-1, 1), True)
    student_binary, student_non_target = _split_at_target(student_logits / temperature, target_mask)
    teacher_binary, teacher_non_target = _split_at_target(teacher_logits / temperature, target_mask)
    tckd = _kl_from_log_probs(teacher_binary, student_binary)
    nckd = _kl_from_log_probs(teacher_non_target, student_non_target)
    return (alpha * tckd + beta * nckd) * temperature**2


def _split_at_target(scaled_logits: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of (target, non-target), and log-softmax over the non-target classes."""
    batch, classes = scaled_logits.shape
    # Each row has exactly one target, so the non-target logits reshape to (batch, classes − 1).
    non_target = scaled_logits[~target_mask].view(batch, classes - 1)
    log_partition = torch.logsumexp(scaled_logits, dim=1, keepdim=True)
    log_target = scaled_logits[target_mask].view(batch, 1) - log_partition
    log_rest = torch.logsumexp(non_target, dim=1, keepdim=True) - log_partition
    return torch.cat([log_target, log_rest], dim=1), F.log_softmax(non_target, dim=1)


def _kl_from_log_probs(target_log_probs: torch.Tensor, input_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ input), summed over classes and averaged over the batch."""
    return (target_log_probs.exp() * (target_log_probs - input_log_probs)).sum(dim=1).mean()


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
              beta: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """DIST: T² · (beta · inter-class + gamma · intra-class) relation loss.

    Inter-class: 1 − Pearson correlation between the student's and the teacher's softened
    probabilities of each sample (across classes), averaged over the batch. Intra-class:
    1 − Pearson correlation of each class's probabilities across the batch, averaged over
    classes. Correlation ignores scale and shift, so the student need not match the teacher's
    confidence exactly, only its ranking and relative spacing — the point for strong teachers.

    The T² factor follows the authors' code; the paper's appendix listing omits it. At the
    default T = 1 (the code's default) the two agree.

    The intra-class term needs a batch of at least two: for a single sample it is the
    constant ``gamma``, with no gradient.

    Reference: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

    Example::

        loss = dist_loss(student(x), teacher(x).detach(), temperature=1.0, beta=1.0, gamma=1.0)
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_probs = F.softmax(student_logits / temperature, dim=1)
    teacher_probs = F.softmax(teacher_logits / temperature, dim=1)
    inter_class = 1.0 - _pearson(student_probs, teacher_probs, dim=1).mean()
    intra_class = 1.0 - _pearson(student_probs, teacher_probs, dim=0).mean()
    return (beta * inter_class + gamma * intra_class) * temperature**2


def _pearson(first: torch.Tensor, second: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation along ``dim``; 0 where either side is constant."""
    first = first - first.mean(dim=dim, keepdim=True)
    second = second - second.mean(dim=dim, keepdim=True)
    covariance = (first * second).sum(dim=dim)
    # Clamp the product of squared norms, not each norm: the clamp only bites for a constant
    # vector (where the correlation is undefined), and sqrt never sees 0, whose gradient is inf.
    norms = ((first**2).sum(dim=dim) * (second**2).sum(dim=dim)).clamp_min(eps**2).sqrt()
    return covariance / norms


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each logit vector over the classes: mean 0 and standard deviation 1 per sample.

    Uses the population standard deviation (divide by the class count K): the K logits are
    the whole population, not a sample of one, and the result then has exactly unit standard
    deviation. The authors' code calls ``torch.std``, which divides by K − 1; the difference
    is a factor sqrt(K / (K − 1)) on the effective temperature (0.5% for 100 classes). ``eps`` guards
    constant vectors; they map to zeros. Standardising makes a loss blind to the student's
    logit scale and offset, so the student matches the teacher's logit *relations*, not their
    magnitude. It is ill-conditioned for near-constant logits (a zero-initialised head).

    Reference: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

    Example::

        loss = soft_target_kl(standardize_logits(student(x)), standardize_logits(teacher(x)), 2.0)
    """
    mean = logits.mean(dim=-1, keepdim=True)
    # torch.std's backward is defined (as 0) at zero spread; a hand-written sqrt(var) gives NaN there.
    std = logits.std(dim=-1, keepdim=True, correction=0)
    return (logits - mean) / (std + eps)


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"expected student and teacher logits of the same (batch, classes) shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
