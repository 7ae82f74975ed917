"""Sampled teacher targets (Anshumann et al., "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs",
ACL 2025): per position, n tokens drawn with replacement from the teacher's next-token distribution at temperature
T, kept as the distinct tokens drawn and how often each was drawn.

With c_v the count of token v and w_v = c_v / n, the loss T² · Σ_v w_v (log w_v − log q_v), q the student's softmax
at T, has the gradient T · (q − w) with respect to the student's logits. Since the draws come from the teacher's p
itself (the proposal is the target, so every importance weight is 1), E[w] = p and the expected gradient is
T · (q − p): the gradient of the forward KL T² · KL(p ‖ q), with no bias. Top-k targets, by contrast, drop the
tail's shape and over-weight the head. The loss's value is the KL from the empirical distribution w, which is not
an unbiased estimate of KL(p ‖ q) (w has less entropy than p); its gradient is what trains.

Stored as 16-bit ids and 8-bit counts: 3 · n bytes a token (n ≤ 255).
"""
from __future__ import annotations

import torch

from distillery.losses.topk import top_k_divergence, top_k_forward_kl_with_gradient

MAX_SAMPLES = 255  # counts are stored in one byte


@torch.no_grad()
def teacher_samples(teacher_logits: torch.Tensor, n: int, *, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws per position from softmax(teacher_logits / temperature) (``[..., V]``), as counts ``[..., n]``
    (uint8, summing to ``n``, the most drawn first) and token ids ``[..., n]`` (int64). Fewer than ``n`` distinct
    tokens leave slots of count 0, each naming a distinct token that was not drawn (so a slot never repeats a
    token). The same ``generator`` state gives the same draws. Raises ValueError for n outside [1, 255].

    Example: ``counts, ids = teacher_samples(teacher(x).logits, 12, generator=torch.Generator().manual_seed(0))``
    """
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"teacher samples are counted in one byte: n must be in [1, {MAX_SAMPLES}], got {n}")
    vocabulary = teacher_logits.shape[-1]
    probabilities = torch.softmax(teacher_logits.float().reshape(-1, vocabulary) / temperature, dim=-1)
    draws = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    counts = torch.zeros_like(probabilities).scatter_add_(-1, draws, torch.ones_like(draws, dtype=torch.float32))
    # The n largest counts: the tokens drawn, then distinct undrawn ones (count 0) where fewer than n were drawn.
    top_counts, ids = counts.topk(min(n, vocabulary), dim=-1)
    shape = teacher_logits.shape[:-1] + (ids.shape[-1],)
    return top_counts.to(torch.uint8).reshape(shape), ids.reshape(shape)


def log_weights(counts: torch.Tensor) -> torch.Tensor:
    """log(c / n) per slot ``[..., n]`` (float32, −inf for an empty slot) from :func:`teacher_samples`' counts."""
    counts = counts.float()
    return (counts / counts.sum(-1, keepdim=True).clamp_min(1.0)).log()


def sampled_forward_kl(student_logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, *,
                       temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(w ‖ q) per position ``[...]`` (float32) from the student's logits ``[..., V]``, the samples'
    :func:`log_weights` ``[..., n]`` and their ids ``[..., n]``; differentiable (autograd)."""
    empty = torch.full(weights.shape[:-1], float("-inf"), device=weights.device)
    return top_k_divergence(student_logits.float() / temperature, weights, ids, empty) * temperature ** 2


@torch.no_grad()
def sampled_forward_kl_with_gradient(student_logits: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, *,
                                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sampled_forward_kl` per row ``[N]`` and its gradient T · (q − w) with respect to the student's logits
    ``[N, V]``, written out: the top-k forward KL with an empty tail (no mass outside the samples) at T."""
    empty = torch.full(weights.shape[:-1], float("-inf"), device=weights.device)
    loss, gradient = top_k_forward_kl_with_gradient(student_logits.float() / temperature, weights, ids, empty)
    return loss * temperature ** 2, gradient.mul_(temperature)
