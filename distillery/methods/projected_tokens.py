"""Token distillation's loss computed from the student's last hidden states a chunk of positions at a time, so the
``[batch, positions, vocabulary]`` logits are never held (:func:`distillery.losses.projected.projected_loss`).

Only the counted positions are projected (a chat batch's assistant tokens, not its prompts or padding). The teacher
is read the same way: its cached top-k targets at those positions, or its own hidden states projected chunk by
chunk without gradients (or, for a teacher that cannot be split, its logits at the counted positions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from distillery.data.batch import Batch, model_logits
from distillery.errors import ModelError
from distillery.losses.projected import projected_loss
from distillery.losses.tokens import forward_kl_with_gradient, token_divergence
from distillery.losses.sampled import sampled_forward_kl, sampled_forward_kl_with_gradient
from distillery.losses.topk import top_k_divergence, top_k_forward_kl_with_gradient
from distillery.models.lm_head import SplitModel


@dataclass
class TokenLossSettings:
    """What the loss is: the divergence's options (kind, temperature, beta, alpha), the weight ``alpha`` of the
    cross-entropy on the text and the chunk of positions."""

    divergence: dict
    alpha: float
    chunk_size: int


def projected_token_loss(student: SplitModel, teacher_chunk: Callable[[slice], tuple], batch: Batch,
                         hidden: torch.Tensor, settings: TokenLossSettings) -> tuple[torch.Tensor, dict]:
    """The weighted loss ``(1 − alpha) · divergence + alpha · CE`` over the counted positions, and its parts' means
    to log. ``hidden`` is the student's last hidden states at the counted positions ``[N, H]``; ``teacher_chunk(rows)``
    gives the teacher at those rows: ``("logits", [c, V])``, ``("top_k", values, ids, tail)`` or
    ``("samples", log weights, ids, tail)``."""
    count = hidden.shape[0]
    labels = batch.labels[batch.mask.bool()] if batch.labels is not None else None
    labelled = int((labels >= 0).sum()) if labels is not None and settings.alpha > 0 else 0
    vocabulary = student.head.out_features
    sums = {"kd": torch.zeros(()), "ce": torch.zeros(())}

    def loss_of_chunk(logits: torch.Tensor, rows: slice) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        teacher = teacher_chunk(rows)
        if teacher[0] in ("top_k", "samples"):
            check_target_ids(teacher[2], vocabulary)
            if settings.divergence["kind"] == "forward_kl":
                return written_out(logits, rows, *sparse_forward_kl_with_gradient(logits, teacher,
                                                                                   settings.divergence))
            soft = sparse_divergence(logits, teacher, settings.divergence).sum()
        else:
            if teacher[1].shape[-1] != vocabulary:
                raise ModelError(f"the teacher predicts {teacher[1].shape[-1]} tokens and the student {vocabulary}; "
                                 "both need the same vocabulary")
            if settings.divergence["kind"] == "forward_kl":
                return written_out(logits, rows, *forward_kl_with_gradient(
                    logits, teacher[1], settings.divergence["temperature"]))
            soft = token_divergence(logits, teacher[1], **settings.divergence).sum()
        sums["kd"] += soft.detach().float().cpu()
        loss = (1.0 - settings.alpha) * soft / max(count, 1)
        if labelled:
            targets = labels[rows]
            kept = targets >= 0
            hard = (F.cross_entropy(logits.float(), targets.clamp(min=0), reduction="none") * kept).sum()
            sums["ce"] += hard.detach().float().cpu()
            loss = loss + settings.alpha * hard / labelled
        return loss

    def written_out(logits, rows, per_row, gradient) -> tuple[torch.Tensor, torch.Tensor]:
        # Forward KL (per row, and its gradient written out) and the cross-entropy's: the fast path, no autograd.
        soft = per_row.sum()
        sums["kd"] += soft.cpu()
        loss = (1.0 - settings.alpha) * soft / max(count, 1)
        gradient.mul_((1.0 - settings.alpha) / max(count, 1))
        if labelled:
            targets = labels[rows]
            kept = targets >= 0
            picked = targets.clamp(min=0).unsqueeze(-1)
            log_probs = torch.log_softmax(logits.detach().float(), -1)
            hard = -(log_probs.gather(-1, picked).squeeze(-1) * kept).sum()
            sums["ce"] += hard.cpu()
            loss = loss + settings.alpha * hard / labelled
            softmax = log_probs.exp_().scatter_add_(-1, picked, -torch.ones_like(picked, dtype=torch.float32))
            gradient.add_(softmax.mul_(kept.unsqueeze(-1) * (settings.alpha / labelled)))  # (q − one-hot) · weight
        return loss, gradient.to(logits.dtype)

    loss = projected_loss(hidden, student.head, loss_of_chunk, settings.chunk_size)
    logs = {"kd": sums["kd"] / max(count, 1)}
    if labelled:
        logs["ce"] = sums["ce"] / labelled
    return loss, logs


def check_target_ids(ids: torch.Tensor, vocabulary: int) -> None:
    """Refuse top-k or sampled targets naming a token the student has no row for."""
    if ids.numel() and int(ids.max()) >= vocabulary:
        raise ModelError(f"the teacher's targets name token {int(ids.max())} but the student predicts {vocabulary} "
                         "tokens; both need the teacher's vocabulary")


def sparse_divergence(logits: torch.Tensor, teacher: tuple, divergence: dict) -> torch.Tensor:
    """The divergence per row ``[c]`` of the student's logits ``[c, V]`` from top-k targets (the bucketed forward or
    reverse KL at T = 1) or sampled ones (T² · KL(w ‖ q) at the divergence's temperature); autograd."""
    kind, values, ids, tail = teacher
    if kind == "samples":
        return sampled_forward_kl(logits, values, ids, temperature=divergence["temperature"])
    return top_k_divergence(logits, values, ids, tail, kind=divergence["kind"])


def sparse_forward_kl_with_gradient(logits: torch.Tensor, teacher: tuple, divergence: dict
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sparse_divergence`'s forward KL per row and its gradient with respect to the logits, written out."""
    kind, values, ids, tail = teacher
    if kind == "samples":
        return sampled_forward_kl_with_gradient(logits, values, ids, temperature=divergence["temperature"])
    return top_k_forward_kl_with_gradient(logits, values, ids, tail)


def teacher_source(teacher: torch.nn.Module, split: SplitModel | None, batch: Batch, *, cached=None,
                   sparse: Callable[[torch.Tensor], tuple] | None = None) -> Callable[[slice], tuple]:
    """``teacher_chunk`` for :func:`projected_token_loss`: the cached top-k or sampled targets (``cached``, a
    :class:`~distillery.teachers.token_targets.TokenTargets`) of the batch's counted positions, or the live teacher's
    logits made a chunk at a time from its hidden states (``split``) or whole (without one), turned into sparse
    targets by ``sparse(logits)`` when given."""
    mask = batch.mask.bool()
    device = batch.device
    if cached is not None:
        values, ids, tail = (part.to(device)[mask] for part in cached[batch.indices])
        return lambda rows: (cached.kind, values[rows], ids[rows], tail[rows])
    with torch.no_grad():
        if split is not None:
            states = split.hidden_states(batch.inputs)[mask]
            project = lambda rows: split.head(states[rows])  # noqa: E731
        else:
            logits = model_logits(teacher, batch.inputs)[mask]
            project = lambda rows: logits[rows]  # noqa: E731

    @torch.no_grad()
    def chunk(rows: slice) -> tuple:
        logits = project(rows)
        return sparse(logits) if sparse is not None else ("logits", logits)
    return chunk
