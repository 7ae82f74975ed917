"""In-memory batching: whole-tensor indexing per batch, reproducible per (seed, epoch)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from distillery.data.augment import Augmentation
from distillery.data.batch import UNLABELED, Batch
from distillery.data.dataset import ArrayDataset
from distillery.errors import ConfigError


class BatchIterator:
    """Iterates an ArrayDataset in :class:`~distillery.data.batch.Batch` es of inputs, labels and indices.

    `indices` are the positions in the dataset (int64, always on the CPU), so a cache can be
    keyed by them. Order and augmentation draws depend only on (seed, epoch), so a resumed
    run sees the same batches. Example::

        batches = BatchIterator(train, batch_size=128, shuffle=True, seed=0)
        for epoch in range(epochs):
            batches.set_epoch(epoch)
            for inputs, labels, indices in batches:
                ...
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augmentation: Optional[Augmentation] = None,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        drop_last: bool = False,
        with_labels: bool = True,
        labeled: Optional[torch.Tensor] = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augmentation = augmentation
        self.transform = transform
        self.drop_last = drop_last
        self.with_labels = with_labels  # False: an unlabeled transfer set, batches carry None for labels
        if labeled is not None and (labeled.dtype != torch.bool or labeled.shape != (len(dataset),)):
            raise ConfigError(f"labeled must be a boolean mask with one entry per sample ({len(dataset)})")
        self.labeled = labeled  # a mask: samples outside it carry UNLABELED instead of their label
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration reproduces."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        # A large odd multiplier keeps (seed, epoch) pairs from colliding for any realistic epoch count.
        return torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        generator = self._generator()
        size = len(self.dataset)
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        inputs, labels = self.dataset.inputs, self.dataset.labels
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            indices = order[start : start + self.batch_size]
            batch_inputs = inputs[indices.to(inputs.device)]
            batch_labels = labels[indices.to(labels.device)]
            if self.labeled is not None:
                batch_labels = batch_labels.masked_fill(~self.labeled[indices], UNLABELED)
            if self.augmentation is not None:
                batch_inputs = self.augmentation(batch_inputs, generator)
            if self.transform is not None:
                batch_inputs = self.transform(batch_inputs)
            yield Batch(batch_inputs, batch_labels if self.with_labels else None, indices=indices)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return -(-len(self.dataset) // self.batch_size)
