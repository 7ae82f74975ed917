"""A checkpoint ready to compress: its model in eval mode, with its own data in its own preprocessing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.data import load_dataset
from distillery.engine.checkpoint import resolve_checkpoint
from distillery.errors import ConfigError, DataError
from distillery.models.checkpoint import load_model
from distillery.runs import SPLIT_SEED, PreparedData, checkpoint_data

DEFAULT_CALIBRATION_SAMPLES = 512


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


def load_source(path: str | Path) -> CheckpointSource:
    """Load a checkpoint of ours with its recorded test set (normalised) and training split (raw).

    Example::

        source = load_source("runs/distilled")
        logits = source.model(source.data.test.inputs[:8])
    """
    model, metadata = load_model(path)
    # Exporters trace the model as it is: in training mode, batch norm would use batch statistics.
    model.eval()
    return CheckpointSource(resolve_checkpoint(path), model, metadata, checkpoint_data(path, metadata))


def calibration_inputs(source: CheckpointSource, samples: int = DEFAULT_CALIBRATION_SAMPLES,
                       dataset: str | None = None, data_path: str | None = None) -> torch.Tensor:
    """``samples`` training inputs (a seeded choice), preprocessed as the checkpoint records.

    They come from the checkpoint's own training split, or from the training split of ``dataset``
    (any dataset name, with ``data_path``), which must have the model's input shape.

    Example::

        inputs = calibration_inputs(source, 256, dataset="npz", data_path="unlabeled.npz")
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"calibration samples must be an integer >= 1, got {samples!r}")
    if dataset is None and data_path is not None:
        raise ConfigError(f"a calibration path ({data_path}) needs a calibration dataset naming its format, e.g. npz")
    train = load_dataset(dataset, data_path)[0] if dataset is not None else source.data.train
    if train.input_shape != source.input_shape:
        raise DataError(f"calibration data {train.source or dataset} has inputs of shape {train.input_shape} but "
                        f"the model {source.stem} takes {source.input_shape}; calibrate on data shaped like its own")
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    chosen = train.inputs[torch.randperm(len(train), generator=generator)[:samples]]
    normalizer = source.data.normalizer
    return normalizer(chosen) if normalizer is not None else chosen
