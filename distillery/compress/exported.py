"""What an export returns, whatever its format: where the artifact is and how it was verified."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExportResult:
    """Where the artifact is and how it was verified: the largest absolute logit difference from PyTorch on
    ``samples`` test inputs, within ``tolerance``; ``parameters`` counts the weights stored in the artifact."""

    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    samples: int
    parameters: int
    size_bytes: int
