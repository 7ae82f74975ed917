"""Losses between a teacher and a student whose tokenizers differ: both read the same text, cut into tokens
differently, so their next-token distributions are over different vocabularies and at different positions.

Positions are matched by characters: :func:`aligned_spans` groups each tokenisation's consecutive tokens into
spans that cover the same characters of the text (a span closes where both tokenisations have a token boundary).
A model's prediction of a span is its distribution over the span's first token, scaled by the probability it gave
each later token of the span (the chain rule: :func:`span_probabilities`), so both models predict the same piece
of text, each in its own vocabulary. On aligned spans:

* :func:`uld_loss`, Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
  Universal Logit Distillation Loss for LLMs", arXiv 2402.12030): the Wasserstein-1 distance between the two
  distributions with their probabilities each sorted in decreasing order and the shorter padded with zeros, which
  for sorted vectors is the L1 distance ``Σ_i |sort(p_s)_i − sort(p_t)_i|``. It needs no map between vocabularies
  and so ignores which token is which.
* :func:`gold_loss`, the hybrid of TRL's GOLD trainer: tokens whose strings both vocabularies hold are compared
  token by token (``Σ_shared |p_s(x) − p_t(x)|``, the same L1 units), the others by ULD over the rest of each
  vocabulary; weighted ``matched_weight · matched + unmatched_weight · unmatched``.

All of them take and return per-span values; the caller averages over the spans that count.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch


class Span(NamedTuple):
    """Tokens ``[student_start, student_end)`` of the student's tokenisation and ``[teacher_start, teacher_end)`` of
    the teacher's, covering the same characters."""

    student_start: int
    student_end: int
    teacher_start: int
    teacher_end: int


def aligned_spans(student_offsets: Sequence[tuple[int, int]],
                  teacher_offsets: Sequence[tuple[int, int]]) -> list[Span]:
    """The two tokenisations of one text cut into the shortest spans that cover the same characters.

    ``*_offsets`` are each token's ``(start, end)`` character offsets in the text, in order (what a fast tokenizer
    returns with ``return_offsets_mapping=True``). A span closes where both sides end a token at the same character
    and neither side's next token starts before it: byte-level tokenizers cut a character outside ASCII into
    several tokens that each carry the whole character's offsets, and such pieces stay in one span. A token of no
    characters (a special token) joins the span after it. What is left at the end of either side (text one side
    did not cover) is one last span.

    Example: ``aligned_spans([(0, 5), (5, 11)], [(0, 3), (3, 5), (5, 11)])`` is
    ``[Span(0, 1, 0, 2), Span(1, 2, 2, 3)]`` ("Hello" | " world" against "Hel" "lo" | " world").
    """
    spans: list[Span] = []
    student_count, teacher_count = len(student_offsets), len(teacher_offsets)
    s = t = s_start = t_start = 0
    while s < student_count and t < teacher_count:
        s_end, t_end = student_offsets[s][1], teacher_offsets[t][1]
        if s_end < t_end:
            s += 1
        elif t_end < s_end:
            t += 1
        elif _continues(student_offsets, s, s_end) or _continues(teacher_offsets, t, t_end):
            # A piece of the same character follows on one side: advance that side (both, if both).
            s += _continues(student_offsets, s, s_end)
            t += _continues(teacher_offsets, t, t_end)
        else:
            s, t = s + 1, t + 1
            spans.append(Span(s_start, s, t_start, t))
            s_start, t_start = s, t
    if s_start < student_count or t_start < teacher_count:
        spans.append(Span(s_start, student_count, t_start, teacher_count))
    return spans


def _continues(offsets: Sequence[tuple[int, int]], index: int, end: int) -> bool:
    """Whether the token after ``index`` starts before ``end``: it is another piece of the same character."""
    return index + 1 < len(offsets) and offsets[index + 1][0] < end


def span_probabilities(log_probs: torch.Tensor, tokens: torch.Tensor, starts: torch.Tensor,
                       ends: torch.Tensor) -> torch.Tensor:
    """Each span's prediction by one model: ``[S, V]``.

    ``log_probs`` ``[N, V]``: row ``n`` is the model's log-distribution over token ``n`` of its tokenisation (given
    the tokens before it). ``tokens`` ``[N]``: the tokens. Span ``k`` covers tokens ``[starts[k], ends[k])``; its row
    is ``exp(log_probs[starts[k]]) · Π_{m = starts[k] + 1}^{ends[k] − 1} exp(log_probs[m, tokens[m]])``: the
    distribution over the span's first token times the probability of the rest of the span (the chain rule), so
    the entry of the span's own first token is the probability of the span's whole text. Not normalised unless
    every span is one token. Differentiable in ``log_probs``.
    """
    token_log_probs = log_probs.gather(-1, tokens[:, None]).squeeze(-1)  # [N]
    # Σ over m in (start, end) of token_log_probs[m], from a cumulative sum with a leading zero.
    cumulative = torch.cat([token_log_probs.new_zeros(1), token_log_probs.cumsum(0)])
    rest = cumulative[ends] - cumulative[starts + 1]
    return (log_probs[starts] + rest[:, None]).exp()


def uld_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """ULD per span: ``Σ_i |sort(p_s)_i − sort(p_t)_i|``, both sorted in decreasing order, the narrower vocabulary
    padded with zeros. ``student_probs`` ``[S, Vs]``, ``teacher_probs`` ``[S, Vt]`` -> ``[S]``, in probability
    units (0 for equal sorted vectors, at most 2 for distributions). Gradients flow to whichever side requires them
    (the sort's permutation is piecewise constant)."""
    return _sorted_l1(student_probs, teacher_probs)


def gold_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor, shared_student: torch.Tensor,
              shared_teacher: torch.Tensor, matched_weight: float = 1.0, unmatched_weight: float = 1.0
              ) -> torch.Tensor:
    """GOLD's hybrid per span: shared tokens compared one to one, the rest by ULD.

    ``shared_student[i]`` and ``shared_teacher[i]`` are the two ids of one token string both vocabularies hold
    (:func:`shared_vocabulary`). The value is ``matched_weight · Σ_i |p_s(shared_student[i]) −
    p_t(shared_teacher[i])| + unmatched_weight · ULD(p_s outside shared_student, p_t outside shared_teacher)``:
    ``[S, Vs]`` and ``[S, Vt]`` -> ``[S]``.
    """
    matched = (student_probs[:, shared_student] - teacher_probs[:, shared_teacher]).abs().sum(dim=-1)
    student_rest = _without(student_probs, shared_student)
    teacher_rest = _without(teacher_probs, shared_teacher)
    return matched_weight * matched + unmatched_weight * _sorted_l1(student_rest, teacher_rest)


def shared_vocabulary(student_vocabulary: Mapping[str, int],
                      teacher_vocabulary: Mapping[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids, in the student's and the teacher's vocabularies, of every token string both hold (ordered by the
    student's id), as two int64 tensors of one length. Vocabularies as ``tokenizer.get_vocab()`` gives them."""
    pairs = sorted((student_id, teacher_vocabulary[text]) for text, student_id in student_vocabulary.items()
                   if text in teacher_vocabulary)
    student_ids = torch.tensor([pair[0] for pair in pairs], dtype=torch.long)
    teacher_ids = torch.tensor([pair[1] for pair in pairs], dtype=torch.long)
    return student_ids, teacher_ids


def _without(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(probs.shape[-1], dtype=torch.bool, device=probs.device)
    keep[ids] = False
    return probs[:, keep]


def _sorted_l1(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    width = max(first.shape[-1], second.shape[-1])
    first = torch.nn.functional.pad(first.sort(dim=-1, descending=True).values, (0, width - first.shape[-1]))
    second = torch.nn.functional.pad(second.sort(dim=-1, descending=True).values, (0, width - second.shape[-1]))
    return (first - second).abs().sum(dim=-1)
