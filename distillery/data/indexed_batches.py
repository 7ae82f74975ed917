"""Batches drawn by index from a dataset held as whole tensors, in an order fixed by (seed, epoch)."""
from __future__ import annotations

from typing import Iterator

import torch

from distillery.data.batch import Batch
from distillery.errors import ConfigError


class IndexedBatches:
    """The common part of batch iterators over ``size`` samples: the seeded order per epoch and the batching.
    Subclasses say what one batch of given indices is (:meth:`batch`). A resumed run sees the same batches."""

    def __init__(self, size: int, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration reproduces."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        # The same large odd multiplier as BatchIterator: (seed, epoch) pairs never collide.
        generator = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        for start in range(0, self.size, self.batch_size):
            yield self.batch(order[start: start + self.batch_size])

    def batch(self, indices: torch.Tensor) -> Batch:
        raise NotImplementedError
