"""Whole-dataset transforms: a seeded train/validation split and input normalisation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from distillery.data.dataset import ArrayDataset
from distillery.data.memmap import MemmapInputs
from distillery.errors import ConfigError, DataError


def _sample_dims(rank: int) -> list[int]:
    """The dimensions a statistic is taken over: all but the channel (images) or feature (tables) one."""
    return [0] + list(range(2, rank)) if rank >= 2 else [0]


def train_val_split(
    dataset: ArrayDataset, val_fraction: float, seed: int
) -> tuple[ArrayDataset, Optional[ArrayDataset]]:
    """Split off a random validation set; `(dataset, None)` when `val_fraction == 0`.

    Example: `train, val = train_val_split(train, val_fraction=0.1, seed=0)`
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction {val_fraction} is out of range; use a value in [0, 1), e.g. 0.1")
    if val_fraction == 0.0:
        return dataset, None
    # At least one validation sample: a tiny fraction of a small set should not silently mean "no validation".
    val_size = max(1, round(val_fraction * len(dataset)))
    if val_size >= len(dataset):
        raise ConfigError(
            f"val_fraction {val_fraction} leaves no training samples out of {len(dataset)}; use a smaller fraction"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)
    # Sorted so each part keeps the original sample order.
    val_indices, _ = order[:val_size].sort()
    train_indices, _ = order[val_size:].sort()
    return dataset.subset(train_indices), dataset.subset(val_indices)


@dataclass(frozen=True)
class Normalizer:
    """Subtract a mean and divide by a std: per channel for images ``[N, C, H, W]``, per feature for tables
    ``[N, F]`` (features on different scales each get their own).

    Example::

        normalizer = Normalizer.fit(train)
        train, test = normalizer.apply(train), normalizer.apply(test)
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Per (device, dtype) copies of mean/std, so a training loop does not upload them every batch.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(value) for value in self.mean))
        object.__setattr__(self, "std", tuple(float(value) for value in self.std))
        if not self.mean or len(self.mean) != len(self.std):
            raise ConfigError(
                f"preprocessing mean {list(self.mean)} and std {list(self.std)} must give one value per channel "
                "(or feature), the same number of each"
            )
        if any(not value > 0 for value in self.std):
            raise ConfigError(f"preprocessing std {list(self.std)} must be positive: it divides the inputs")

    @classmethod
    def fit(cls, dataset: ArrayDataset) -> "Normalizer":
        """Statistics of `dataset.inputs`: over N, H, W per channel for images, over N per feature for tables."""
        inputs = dataset.inputs
        if isinstance(inputs, MemmapInputs):
            return cls._fit_chunks(inputs)
        variance, mean = torch.var_mean(inputs, dim=_sample_dims(inputs.dim()), correction=0)
        variance, mean = variance.reshape(-1), mean.reshape(-1)
        std = variance.sqrt()
        # A constant channel (e.g. a blank border) would divide by zero; leave its scale alone.
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    @classmethod
    def _fit_chunks(cls, inputs: MemmapInputs) -> "Normalizer":
        # Sums in float64, a chunk at a time: the data never needs to be in memory at once.
        dims = _sample_dims(inputs.dim())
        count, total, squares = 0, 0.0, 0.0
        for chunk in inputs.chunks():
            count += chunk.numel() // (chunk.shape[1] if inputs.dim() >= 2 else 1)
            total = total + chunk.sum(dim=dims, dtype=torch.float64)
            squares = squares + chunk.square().sum(dim=dims, dtype=torch.float64)
        mean = (total / count).reshape(-1)
        std = (squares / count - mean * mean).clamp_min(0.0).sqrt().reshape(-1)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised copy of a batch, on the batch's device and (floating) dtype."""
        if not inputs.is_floating_point():
            inputs = inputs.to(torch.float32)
        mean, std = self._broadcast(inputs)
        return (inputs - mean) / std

    def denormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """The inverse of calling it: normalised inputs back on their raw scale, ``x · std + mean``."""
        mean, std = self._broadcast(inputs)
        return inputs * std + mean

    def _broadcast(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self._statistics(inputs)
        if len(self.mean) > 1:
            if inputs.dim() < 2 or inputs.shape[1] != len(self.mean):
                raise DataError(
                    f"inputs of shape {tuple(inputs.shape)} have {inputs.shape[1] if inputs.dim() >= 2 else 1} "
                    f"channels (or features) but their preprocessing (mean and std) has {len(self.mean)}; give "
                    "inputs with as many channels as the model was trained on"
                )
            view = [1, len(self.mean)] + [1] * (inputs.dim() - 2)
            mean, std = mean.view(view), std.view(view)
        return mean, std

    def _statistics(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (inputs.device, inputs.dtype)
        if key not in self._cache:
            self._cache[key] = (
                torch.tensor(self.mean, dtype=inputs.dtype, device=inputs.device),
                torch.tensor(self.std, dtype=inputs.dtype, device=inputs.device),
            )
        return self._cache[key]

    def apply(self, dataset: ArrayDataset) -> ArrayDataset:
        """A new dataset with normalised inputs; labels and class names are shared.

        Inputs on disk are read into memory here: this is for validation and test splits; a training set
        stays on disk and is normalised per batch (``BatchIterator(..., transform=normalizer)``).
        """
        inputs = dataset.inputs
        if isinstance(inputs, MemmapInputs):
            inputs = torch.cat(list(inputs.chunks()))
        return ArrayDataset(self(inputs), dataset.labels, list(dataset.class_names), dataset.source)

    def to_dict(self) -> dict:
        """JSON-ready form, e.g. `{"mean": [0.286], "std": [0.353]}`."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalizer":
        """Inverse of `to_dict`. Example: `Normalizer.from_dict({"mean": [0.5], "std": [0.25]})`."""
        missing = [key for key in ("mean", "std") if key not in data]
        if missing:
            raise ConfigError(f"preprocessing lacks {missing[0]!r}; give both mean and std, one value per channel")
        return cls(tuple(data["mean"]), tuple(data["std"]))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test), each ascending: a seeded ``test_fraction`` of every class goes to test.

    The test size is ``round(test_fraction * N)`` (at least 1, leaving at least 1 for training), shared
    among classes in proportion to their sizes (largest remainders first). Raises ConfigError for a
    fraction outside (0, 1) or fewer than 2 samples. Example: ``train_rows, test_rows = stratified_split(y, 0.2, 0)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction {test_fraction} is out of range; use a value in (0, 1), e.g. 0.2")
    if len(labels) < 2:
        raise ConfigError(f"{len(labels)} sample(s) cannot be split into train and test; add samples or a test set")
    classes, counts = np.unique(labels, return_counts=True)
    total = min(max(1, round(test_fraction * len(labels))), len(labels) - 1)
    shares = counts * (total / len(labels))
    quotas = np.floor(shares).astype(np.int64)
    # A stable sort gives tied remainders to the lower class index: the same split on every platform.
    for position in np.argsort(-(shares - quotas), kind="stable")[: total - int(quotas.sum())]:
        quotas[position] += 1
    generator = np.random.default_rng(seed)
    test = np.sort(np.concatenate([generator.permutation(np.flatnonzero(labels == label))[:quota]
                                   for label, quota in zip(classes, quotas)]))
    return np.setdiff1d(np.arange(len(labels)), test), test
