"""Language-model metrics over counted tokens: cross-entropy, perplexity, next-token accuracy, agreement."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from distillery.data.batch import as_batch, model_logits
from distillery.eval.metrics import confidence_bins

CALIBRATION_BINS = 15


@torch.no_grad()
def language_model_metrics(model: nn.Module, batches: Iterable, *, teacher: nn.Module | None = None,
                           device: torch.device | str = "cpu") -> dict[str, Any]:
    """The model's mean next-token cross-entropy in nats (``nll``), ``perplexity`` = exp(nll), next-token
    ``accuracy`` (top-1), ``ece`` (the expected calibration error of the next-token probabilities: 15 equal-width
    bins of the top-1 probability, as :func:`distillery.eval.metrics.expected_calibration_error`), over the positions
    each batch counts (mask, labels >= 0), and ``tokens``, their number.
    With a ``teacher``, also ``agreement`` (the share of positions where both predict the same token), the
    teacher's forward KL(teacher ‖ model) per token (``kl_from_teacher``, nats) and the teacher's own metrics
    (``teacher``), all from one pass over the batches; agreement and KL over the output rows both models have (where
    one head is padded beyond the other's, its extra rows are left out).

    Perplexity is taken over all counted tokens at once (exp of the mean), not averaged over blocks.
    ``block_nll`` and ``block_tokens`` list each block's NLL sum and counted tokens, in batch order: what
    :func:`distillery.eval.text_noise.nll_difference` compares two models with.
    Example: ``language_model_metrics(student, TokenBatches(test, 8))["perplexity"]``
    """
    was_training = model.training
    model.eval()
    ours, theirs = _Scores(), _Scores()
    agree, kl = 0, 0.0
    for batch in map(as_batch, batches):
        batch = batch.to(device)
        keep = batch.labels >= 0 if batch.mask is None else batch.mask.bool() & (batch.labels >= 0)
        logits = model_logits(model, batch.inputs).float()
        ours.add(logits, batch.labels, keep)
        if teacher is not None:
            teacher_logits = model_logits(teacher, batch.inputs).float()
            theirs.add(teacher_logits, batch.labels, keep)
            # Output layers padded to different sizes over one tokenizer: compared over the rows both have.
            width = min(teacher_logits.shape[-1], logits.shape[-1])
            teacher_log_probs = torch.log_softmax(teacher_logits[keep][:, :width], -1)
            compared = logits[keep][:, :width]
            agree += int((teacher_log_probs.argmax(-1) == compared.argmax(-1)).sum())
            kl += (teacher_log_probs.exp() * (teacher_log_probs - torch.log_softmax(compared, -1))).sum().item()
    model.train(was_training)
    metrics = ours.metrics()
    if teacher is not None:
        tokens = max(metrics["tokens"], 1)
        metrics.update(agreement=agree / tokens, kl_from_teacher=kl / tokens, teacher=theirs.metrics())
    return metrics


class _Scores:
    """One model's sums over the counted positions: per-block cross-entropy and counts, correct predictions."""

    def __init__(self) -> None:
        self.block_nll: list[float] = []
        self.block_tokens: list[int] = []
        self.correct = 0
        self.bins = torch.zeros(3, CALIBRATION_BINS, dtype=torch.float64)  # count, correct, confidence per bin

    def add(self, logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
        """Logits ``[B, L, V]`` (float32), labels and the counted mask ``[B, L]``."""
        losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        self.block_nll += (losses * keep).sum(dim=1).tolist()
        self.block_tokens += keep.sum(dim=1).tolist()
        self.correct += int(((logits.argmax(-1) == labels) & keep).sum())
        counted = logits[keep]
        # The top-1 probability as exp(max − logsumexp): no [N, V] softmax in float64.
        top, prediction = counted.max(-1)
        confidence = (top - torch.logsumexp(counted, -1)).exp()
        self.bins += torch.stack(confidence_bins(confidence, (prediction == labels[keep]).double(), CALIBRATION_BINS))

    def metrics(self) -> dict[str, Any]:
        tokens = sum(self.block_tokens)
        nll = sum(self.block_nll) / max(tokens, 1)
        count, correct, confidence = self.bins
        ece = float((correct - confidence).abs().sum() / count.sum().clamp_min(1.0))
        return {"nll": nll, "perplexity": math.exp(nll), "accuracy": self.correct / max(tokens, 1), "ece": ece,
                "tokens": tokens,
                "block_nll": self.block_nll, "block_tokens": self.block_tokens}
