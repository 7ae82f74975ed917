"""Whether a difference in cross-entropy (perplexity) between two language models on the same test text is more
than noise.

Tokens of one text are not independent samples, so the interval is over blocks: each block b gives both models'
summed negative log-likelihoods a_b and c_b over its t_b counted tokens; the difference of the per-token means,
Δ = Σ(a_b − c_b) / Σ t_b, is a ratio estimator, and its standard error comes from the blocks' residuals
e_b = a_b − c_b − Δ · t_b (paired: both models are scored on the same blocks, so what the text makes hard for both
cancels): SE = sqrt(n / (n − 1) · Σ e_b²) / Σ t_b, with a t interval on n − 1 degrees of freedom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy.stats import t as student_t


@dataclass(frozen=True)
class NllDifference:
    """``first − second`` mean cross-entropy in nats per token over ``tokens`` tokens in ``blocks`` blocks, with
    its 95% interval; ``ratio`` is the perplexity ratio exp(Δ)."""

    value: float
    low: float
    high: float
    tokens: int
    blocks: int

    @property
    def ratio(self) -> float:
        return math.exp(self.value)

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def describe(self) -> str:
        """E.g. ``"perplexity ×0.82 (cross-entropy -0.198 nats a token, 95% interval -0.25 to -0.15, over 4,096
        tokens in 32 blocks): better beyond noise"``."""
        verdict = "within noise" if self.within_noise else ("better" if self.value < 0 else "worse") + " beyond noise"
        return (f"perplexity ×{self.ratio:.2f} (cross-entropy {self.value:+.3f} nats a token, 95% interval "
                f"{self.low:+.3f} to {self.high:+.3f}, over {self.tokens:,} tokens in {self.blocks} blocks): {verdict}")


def nll_difference(first: Sequence[float], second: Sequence[float], tokens: Sequence[int]) -> NllDifference:
    """The paired difference of two models' per-token cross-entropy from their per-block NLL sums on the same
    blocks (see the module docstring). Raises ValueError for blocks that do not line up or fewer than two.

    Example: ``nll_difference([10.0, 12.0, 9.0], [11.0, 12.5, 9.5], [5, 6, 4]).value  # -2/15``
    """
    if not len(first) == len(second) == len(tokens) or len(tokens) < 2:
        raise ValueError("both models need NLL sums for the same blocks, at least two")
    total = sum(tokens)
    if total <= 0:
        raise ValueError("the blocks hold no counted tokens")
    value = (sum(first) - sum(second)) / total
    residuals = [a - c - value * t for a, c, t in zip(first, second, tokens)]
    blocks = len(tokens)
    error = math.sqrt(blocks / (blocks - 1) * sum(e * e for e in residuals)) / total
    spread = float(student_t.ppf(0.975, blocks - 1)) * error
    return NllDifference(value, value - spread, value + spread, int(total), blocks)
