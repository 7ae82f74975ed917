"""Calibrating a label-space merge on a few labelled samples: a gate that says which teacher's classes a sample
belongs to, learnt from how each teacher responds to it.

Teacher i of a merge knows p_i(c | x, S_i), the distribution within its class set S_i, and nothing of
P(S_i | x). By Bayes, p(c | x) = sum over the teachers i that know c of P(S_i | x) · p_i(c | x, S_i). The gate
estimates P(S_i | x) from each teacher's response to x — its evidence logsumexp(z_i) (the energy score of Liu et
al. 2020, "Energy-based out-of-distribution detection"), its top log-probability and entropy, its whole
distribution over its classes, and its representation (the input of its last linear layer, where it has one: a
linear probe on what the teacher sees) — with a multinomial logistic regression fitted on a few labelled samples
by maximising the merged likelihood of their true classes. The summary numbers alone cannot tell sets apart that
each teacher finds equally familiar (a teacher that knows shirts is as sure of a dress's class as of a shirt's);
its whole distribution and its representation can (BENCHMARKS.md, "Calibrating the merge").
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from distillery.errors import ConfigError


def teacher_features(log_probs: list[torch.Tensor], logits: list[torch.Tensor],
                     representations: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``[B, F]``: for each teacher its logsumexp of its logits, top log-probability and entropy, its
    log-probabilities over its own classes, then, when given, its representation flattened."""
    columns = []
    for index, (own_log_probs, own_logits) in enumerate(zip(log_probs, logits)):
        entropy = -(own_log_probs.exp() * own_log_probs).sum(dim=-1)
        summary = [torch.logsumexp(own_logits, dim=-1), own_log_probs.max(dim=-1).values, entropy]
        columns += [torch.stack(summary, dim=-1), own_log_probs]
        if representations is not None:
            columns.append(representations[index].flatten(1).float())
    return torch.cat(columns, dim=-1)


@contextmanager
def head_input(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, the input of ``model``'s last linear layer (its representation just before the class
    scores) lands in the yielded list; the list stays empty for a model without one (an ONNX teacher)."""
    captured: list[torch.Tensor] = []
    heads = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not heads:
        yield captured
        return
    handle = heads[-1].register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


class MergeGate(nn.Module):
    """``log P(S_i | x)`` for every teacher i, ``[B, teachers]``, from ``features`` columns of
    :func:`teacher_features`, standardised with the calibration samples' mean and deviation."""

    def __init__(self, features: int, teachers: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, teachers)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)  # untrained: every teacher equally likely
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.linear((features - self.mean) / self.std), dim=-1)


def fit_gate(gate: MergeGate, features: torch.Tensor, knows_label: torch.Tensor, class_log_probs: torch.Tensor,
             *, steps: int = 200, weight_decay: float = 1e-2) -> float:
    """Fit ``gate`` on labelled samples: maximise log sum_i P(S_i | x) p_i(y | x) over the teachers i that know
    the true class y. ``features`` ``[N, F]``; ``knows_label`` ``[N, teachers]`` bool; ``class_log_probs``
    ``[N, teachers]``: log p_i(y | x) (anything where teacher i does not know y). Returns the final mean NLL.

    L-BFGS on a convex objective with a small L2 penalty on standardised features (few samples). Raises
    ConfigError when no sample has a label.
    """
    if len(features) == 0:
        raise ConfigError("calibrating a label-space merge needs labelled samples; none were given")
    with torch.no_grad():
        gate.mean.copy_(features.mean(dim=0))
        gate.std.copy_(features.std(dim=0).clamp_min(1e-6) if len(features) > 1 else torch.ones_like(gate.std))
    masked = class_log_probs.masked_fill(~knows_label, float("-inf"))
    optimizer = torch.optim.LBFGS(gate.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        nll = -torch.logsumexp(gate(features) + masked, dim=-1).mean()
        loss = nll + weight_decay * gate.linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    gate.requires_grad_(False)
    with torch.no_grad():
        return float(-torch.logsumexp(gate(features) + masked, dim=-1).mean())
