"""Whether a difference in accuracy between two models on one test set is more than noise.

The interval is Agresti and Caffo's for a difference of two proportions ("Simple and effective confidence
intervals for proportions and differences of proportions result from adding two successes and two failures",
The American Statistician, 2000): each accuracy gets one added success and one added failure, then the Wald
interval. It treats the two models' test errors as independent, which overstates the noise of two models scored
on the same images (their errors are positively correlated): a difference it calls real is real.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Difference:
    """``first − second`` accuracy (fractions) on ``samples`` test samples each, with its 95% interval."""

    first: float
    second: float
    samples: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.first - self.second

    @property
    def images(self) -> int:
        """The difference in correctly classified test samples."""
        return round(self.first * self.samples) - round(self.second * self.samples)

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def describe(self, unit: str = "test images") -> str:
        """E.g. ``"+2.22 points (8 of 360 test images; 95% interval -1.6 to +6.1): within noise"``."""
        verdict = "within noise" if self.within_noise else ("better" if self.value > 0 else "worse") + " beyond noise"
        return (f"{100 * self.value:+.2f} points ({self.images:+d} of {self.samples:,} {unit}; 95% interval "
                f"{100 * self.low:+.1f} to {100 * self.high:+.1f}): {verdict}")


def accuracy_difference(first: float, second: float, samples: int) -> Difference:
    """The difference ``first − second`` of two accuracies (fractions in [0, 1]) measured on ``samples`` samples
    each, with its Agresti–Caffo 95% interval (see the module docstring). Raises ValueError for no samples.

    Example: ``accuracy_difference(0.9, 0.878, 360).within_noise  # True``
    """
    if samples < 1:
        raise ValueError(f"a difference needs test samples; got {samples}")
    adjusted = [(accuracy * samples + 1) / (samples + 2) for accuracy in (first, second)]
    spread = Z_95 * math.sqrt(sum(p * (1 - p) / (samples + 2) for p in adjusted))
    centre = adjusted[0] - adjusted[1]
    return Difference(first, second, samples, max(-1.0, centre - spread), min(1.0, centre + spread))
