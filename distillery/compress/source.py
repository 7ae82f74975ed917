"""A checkpoint ready to compress: its model in eval mode, with its own data in its own preprocessing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from torch import nn

from distillery.app.steps.prepared_data import PreparedData, checkpoint_data
from distillery.models.checkpoint_files import resolve_checkpoint
from distillery.models.checkpoint import load_model


@dataclass
class CheckpointSource:
    """A loaded checkpoint: ``stem`` is its path without suffix (``runs/x/model``), artifacts go beside it."""

    stem: Path
    model: nn.Module
    metadata: dict[str, Any]
    data: PreparedData

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["input_shape"])


def load_source(path: str | Path, allow_factories: Collection[str] = ()) -> CheckpointSource:
    """Load a checkpoint of ours with its recorded test set (normalised) and training split (raw).
    ``allow_factories``: user factories its model.json may name (see :func:`distillery.models.checkpoint.load_model`).

    Example::

        source = load_source("runs/distilled")
        logits = source.model(source.data.test.inputs[:8])
    """
    model, metadata = load_model(path, allow_factories=allow_factories)
    # Exporters trace the model as it is: in training mode, batch norm would use batch statistics.
    model.eval()
    return CheckpointSource(resolve_checkpoint(path), model, metadata,
                            checkpoint_data(path, metadata, allow_factories=allow_factories))
