"""What a tune produces: each finished point, the result, and the short names its tables give grid keys."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from distillery.app.config import RunConfig
from distillery.eval.noise import accuracy_difference

# Column names of keys whose last part says enough; the temperature is T in the papers.
SHORT_NAMES = {"distill.temperature": "T"}


def short_name(key: str, keys: Mapping[str, Any]) -> str:
    """The column name of a grid key: its last part (T for the temperature), the whole key where two clash.

    Example: ``short_name("distill.alpha", {"distill.alpha": 0.5}) == "alpha"``
    """
    leaf = key.rsplit(".", 1)[-1]
    if sum(other.rsplit(".", 1)[-1] == leaf for other in keys) > 1:
        return key
    return SHORT_NAMES.get(key, leaf)


@dataclass
class TunePoint:
    """One finished run of the tune: its settings (dotted key -> value; none for the scratch reference)."""

    name: str
    settings: dict[str, Any]
    run_dir: Path
    val_accuracy: float
    test_accuracy: float
    train_seconds: float
    reused: bool
    val_samples: int = 0  # validation samples its accuracy counts (0: not recorded, runs from before the count)

    @property
    def label(self) -> str:
        """``"T 2, alpha 0.5"``, or ``"from scratch"``."""
        if not self.settings:
            return "from scratch"
        return ", ".join(f"{short_name(key, self.settings)} {value}" for key, value in self.settings.items())


@dataclass
class TuneResult:
    """The best grid point by validation accuracy, its full config, every point and the scratch reference."""

    best: TunePoint
    best_config: RunConfig
    scratch: TunePoint
    points: list[TunePoint]
    output_dir: Path
    final_run: Path | None = None

    @property
    def pays(self) -> bool:
        """Whether the best distilled student beats the student from scratch on validation accuracy."""
        return self.best.val_accuracy > self.scratch.val_accuracy

    @property
    def summary(self) -> str:
        line = (f"best: {self.best.label}: {self.best.val_accuracy:.1%} val vs "
                f"{self.scratch.val_accuracy:.1%} from scratch")
        if self.best.val_samples:
            difference = accuracy_difference(self.best.val_accuracy, self.scratch.val_accuracy, self.best.val_samples)
            line += f", {difference.describe('validation images')}"
        return line if self.pays else line + " (distillation does not pay at this budget)"
