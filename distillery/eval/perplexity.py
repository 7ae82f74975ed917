"""Language-model metrics over counted tokens: cross-entropy, perplexity, next-token accuracy, agreement."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from distillery.data.batch import as_batch, counted_positions, model_logits


@torch.no_grad()
def language_model_metrics(model: nn.Module, batches: Iterable, *, teacher: nn.Module | None = None,
                           device: torch.device | str = "cpu") -> dict[str, float]:
    """The model's mean next-token cross-entropy in nats (``nll``), ``perplexity`` = exp(nll), next-token
    ``accuracy`` (top-1), over the positions each batch counts (mask, labels >= 0), and ``tokens``, their number.
    With a ``teacher``, also ``agreement`` (the share of positions where both predict the same token) and the
    teacher's forward KL(teacher ‖ model) per token (``kl_from_teacher``, nats).

    Perplexity is taken over all counted tokens at once (exp of the mean), not averaged over blocks.
    ``block_nll`` and ``block_tokens`` list each block's NLL sum and counted tokens, in batch order: what
    :func:`distillery.eval.text_noise.nll_difference` compares two models with.
    Example: ``language_model_metrics(student, TokenBatches(test, 8))["perplexity"]``
    """
    was_training = model.training
    model.eval()
    sums = {"nll": 0.0, "correct": 0, "tokens": 0, "agree": 0, "kl": 0.0}
    block_nll, block_tokens = [], []
    for batch in map(as_batch, batches):
        batch = batch.to(device)
        logits = model_logits(model, batch.inputs)
        counts, losses = _per_block(logits, batch.labels, batch.mask)
        block_nll += losses
        block_tokens += counts
        teacher_logits = model_logits(teacher, batch.inputs) if teacher is not None else None
        logits, labels, teacher_logits = counted_positions(batch.mask, logits, batch.labels, teacher_logits)
        kept = labels >= 0
        logits, labels = logits[kept].float(), labels[kept]
        sums["nll"] += F.cross_entropy(logits, labels, reduction="sum").item()
        sums["correct"] += int((logits.argmax(-1) == labels).sum())
        sums["tokens"] += int(labels.numel())
        if teacher_logits is not None:
            teacher_log_probs = torch.log_softmax(teacher_logits[kept].float(), -1)
            sums["agree"] += int((teacher_log_probs.argmax(-1) == logits.argmax(-1)).sum())
            sums["kl"] += (teacher_log_probs.exp() * (teacher_log_probs - torch.log_softmax(logits, -1))).sum().item()
    model.train(was_training)
    tokens = max(sums["tokens"], 1)
    metrics = {"nll": sums["nll"] / tokens, "perplexity": math.exp(sums["nll"] / tokens),
               "accuracy": sums["correct"] / tokens, "tokens": sums["tokens"],
               "block_nll": block_nll, "block_tokens": block_tokens}
    if teacher is not None:
        metrics.update(agreement=sums["agree"] / tokens, kl_from_teacher=sums["kl"] / tokens)
    return metrics


def _per_block(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> tuple[list[int], list[float]]:
    """Each block's counted tokens and summed cross-entropy: logits ``[B, L, V]``, labels and mask ``[B, L]``."""
    keep = labels >= 0 if mask is None else mask.bool() & (labels >= 0)
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return keep.sum(dim=1).tolist(), (losses * keep).sum(dim=1).tolist()
