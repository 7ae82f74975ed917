"""What training produces as it goes: per-epoch records, best weights, an epoch's progress, and the loop's shape.

These are shared by the training loop and the training state that saves and restores it, so both import them
from here and neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from distillery.engine.distributed import DistributedContext

if TYPE_CHECKING:
    from distillery.methods.base import Method, StepOutput


class TrainingLoop(Protocol):
    """What a saved training state reads from and restores into a training loop (the Trainer is one)."""

    method: "Method"
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    device: torch.device
    distributed: DistributedContext
    global_step: int


@dataclass
class PeerBest:
    """A peer model's best weights, chosen by its own validation accuracy; ``metrics`` under plain ``val/`` names."""

    state: dict[str, torch.Tensor] | None = None
    epoch: int = 0
    score: float = float("-inf")
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    """What training produced: per-epoch records, the student's best weights and each peer's."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    best_score: float = float("-inf")
    best_metrics: dict[str, float] = field(default_factory=dict)
    peers: dict[str, PeerBest] = field(default_factory=dict)


@dataclass
class EpochProgress:
    """How far the current epoch has come: batches done, samples seen, summed logs, and the lr it began with.

    A resumed run starts its interrupted epoch from one of these, skipping the ``step`` batches already done.
    """

    lr: float
    step: int = 0
    seen: int = 0
    totals: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, output: "StepOutput", batch_size: int) -> None:
        self.step += 1
        self.seen += batch_size
        for name, value in {"loss": output.loss.detach(), **output.logs}.items():
            self.totals[name] = self.totals.get(name, 0.0) + value.float() * batch_size


def peer_record(record: dict[str, Any], name: str) -> dict[str, Any]:
    """One peer's view of an epoch record: its ``train/<name>/x`` and ``val/<name>/x`` as ``train/x`` and ``val/x``.

    Example: ``peer_record({"epoch": 1, "val/peer1/accuracy": 0.9}, "peer1") == {"epoch": 1, "val/accuracy": 0.9}``
    """
    view = {key: value for key, value in record.items() if "/" not in key}
    for split in ("train", "val"):
        prefix = f"{split}/{name}/"
        view.update({f"{split}/{key[len(prefix):]}": value for key, value in record.items() if key.startswith(prefix)})
    return view
