"""A teacher's next-token distribution kept as its top-k log-probabilities plus one bucket for the rest, and the
divergences of a student against it.

Storing all V log-probabilities of every token of a corpus is V · 4 bytes a token (196 KB for a 49k vocabulary);
the top k and the remaining mass are k · 6 + 4 bytes with float32 values and 16-bit unsigned indices
(vocabularies up to 65,536). The losses compare distributions over k + 1 buckets, the k teacher classes and
"everything else", for teacher and student alike: exact when k is the whole vocabulary (the tail is empty), and a lower bound of the full-vocabulary
divergence otherwise (merging classes never increases a KL, by the log-sum inequality). The targets are the
teacher's at T = 1; a tail's inner shape is unknown, so they cannot be re-softened later.
"""
from __future__ import annotations

import torch

def teacher_top_k(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-``k`` log-probabilities ``[..., k]`` (float32), their vocabulary indices ``[..., k]`` and
    the log of the remaining mass ``[...]`` (−inf when k is the vocabulary). Raises ValueError for k outside
    [1, V].

    Example: ``values, indices, tail = teacher_top_k(teacher(x).logits, 32)``
    """
    vocabulary = teacher_logits.shape[-1]
    if not 1 <= k <= vocabulary:
        raise ValueError(f"k must be in [1, {vocabulary}] (the vocabulary), got {k}")
    log_probs = torch.log_softmax(teacher_logits.float(), dim=-1)
    values, indices = log_probs.topk(k, dim=-1)
    return values, indices, _tail(log_probs, indices)


def _tail(log_probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The log of the mass outside ``indices``, summed in log space (1 − Σ top would be float32 rounding noise
    when the top holds nearly everything); −inf when nothing is outside."""
    return torch.logsumexp(log_probs.scatter(-1, indices, float("-inf")), dim=-1)


def bucketed_student(student_logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The student's log-probabilities over the teacher's k classes and the tail bucket: ``[..., k + 1]``."""
    log_probs = torch.log_softmax(student_logits.float(), dim=-1)
    return torch.cat([log_probs.gather(-1, indices), _tail(log_probs, indices).unsqueeze(-1)], dim=-1)


def top_k_divergence(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor,
                     *, kind: str = "forward_kl") -> torch.Tensor:
    """Forward KL(teacher ‖ student) or reverse KL(student ‖ teacher) over the k + 1 buckets, per position
    (float32 ``[...]``), from the student's logits ``[..., V]`` and :func:`teacher_top_k`'s outputs. Raises
    ValueError for another kind.

    Example: ``loss = top_k_divergence(student(x).logits, *teacher_top_k(teacher_logits, 32)).mean()``
    """
    if kind not in ("forward_kl", "reverse_kl"):
        raise ValueError(f"top-k targets support forward_kl and reverse_kl, not {kind!r}")
    teacher = torch.cat([values, tail.unsqueeze(-1)], dim=-1)
    student = bucketed_student(student_logits, indices)
    first, second = (teacher, student) if kind == "forward_kl" else (student, teacher)
    # An empty bucket (k = V: both tails are −inf) adds 0, not 0 · (−inf − −inf).
    # Filled before the product too: the branch torch.where drops would still send NaN into the gradients.
    empty = first == float("-inf")
    first, second = first.masked_fill(empty, 0.0), second.masked_fill(empty, 0.0)
    return torch.where(empty, torch.zeros_like(first), first.exp() * (first - second)).sum(dim=-1)


@torch.no_grad()
def top_k_forward_kl_with_gradient(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                                   tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k_divergence`'s forward KL per row ``[N]`` and its gradient with respect to the student's logits
    ``[N, V]`` (float32), written out instead of taken by autograd: a few passes over the logits instead of a dozen.

    With q the student's softmax, p the teacher's k probabilities and p_t its tail, q_t = Σ over the other tokens of
    q: the loss is Σ_j p_j (log p_j − log q_(i_j)) + p_t (log p_t − log q_t), and its gradient is q_v − p_j at the
    teacher's token i_j = v and q_v · (1 − p_t / q_t) elsewhere (tested against autograd).
    """
    logits = student_logits.float()
    log_normaliser = torch.logsumexp(logits, dim=-1, keepdim=True)
    softmax = (logits - log_normaliser).exp_()
    student_top = logits.gather(-1, indices) - log_normaliser
    # The tail's mass summed over the other tokens themselves: 1 − Σ top would be rounding noise when the top holds
    # nearly everything.
    gradient = softmax.scatter_(-1, indices, 0.0)
    student_tail = gradient.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
    teacher_tail = tail.exp()
    gradient.mul_((1.0 - teacher_tail / student_tail).unsqueeze(-1))
    teacher = values.exp()
    gradient.scatter_(-1, indices, student_top.exp() - teacher)
    loss = torch.where(teacher > 0, teacher * (values - student_top), torch.zeros_like(values)).sum(-1)
    loss = loss + torch.where(teacher_tail > 0, teacher_tail * (tail - student_tail.log()), torch.zeros_like(tail))
    return loss, gradient

