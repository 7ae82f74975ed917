"""A fixed, seeded set of augmented views of a transfer set, so a teacher's outputs on them can be cached.

Live augmentation draws new images every epoch, so the teacher must run every epoch. With K views drawn
once, the teacher runs once per view and the student cycles through them (epoch e sees view
(e − 1) mod K): teacher and student still see identical augmented images, at the cost of K fixed draws
instead of a fresh one per epoch.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, Sequence

import torch

from distillery.data.augment import Augmentation
from distillery.data.batches import BatchIterator
from distillery.data.dataset import ArrayDataset
from distillery.errors import ConfigError

CHUNK = 4096  # images augmented at once: bounded memory, whole-tensor speed


def augmented_views(dataset: ArrayDataset, augmentation: Augmentation, count: int, seed: int,
                    mix: str | None = None) -> list[ArrayDataset]:
    """``count`` augmented copies of ``dataset``; view v is drawn from a generator seeded with (seed, v).

    With ``mix="mixup"`` a view is also mixed: every sample i blended with a partner j (a seeded permutation of the
    whole set) as ``λ_i · x_i + (1 − λ_i) · x_j``, ``λ_i ~ U[0, 1]``, both augmented in that view: the view fixes the
    augmentation draw, the mixup partner and the weight, so a teacher's outputs on it can be cached (function
    matching with cached views).

    Example::

        views = augmented_views(train, Augmentation(shift=2, flip=True), count=4, seed=0, mix="mixup")
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the number of augmented views must be a whole number >= 1, got {count!r}")
    if mix not in (None, "none", "mixup"):
        raise ConfigError(f"cached views hold mixup or no mix, not {mix!r}; {mix} runs live (remove teacher_views)")
    views = []
    for view in range(count):
        generator = torch.Generator().manual_seed(seed * 1000003 + view)
        chunks = [augmentation(dataset.inputs[start:start + CHUNK], generator)
                  for start in range(0, len(dataset), CHUNK)]
        inputs = torch.cat(chunks)
        if mix == "mixup":
            weights = torch.rand(len(inputs), *([1] * (inputs.dim() - 1)), generator=generator)
            inputs = weights * inputs + (1 - weights) * inputs[torch.randperm(len(inputs), generator=generator)]
        views.append(ArrayDataset(inputs, dataset.labels, dataset.class_names, f"{dataset.source} (view {view})"))
    return views


def view_description(augmentation: Augmentation, seed: int, view: int, mix: str | None = None) -> dict[str, Any]:
    """What a view's images depend on besides the dataset: part of its cache fingerprint."""
    description = {"augmentation": repr(augmentation), "seed": seed, "view": view}
    if mix not in (None, "none"):
        description["mix"] = mix
    return description


class ViewBatches:
    """Batches from view (epoch − 1) mod K, with indices offset by view · N to address a stacked cache.

    Example::

        batches = ViewBatches(views, batch_size=128, shuffle=True, seed=0)
        batches.set_epoch(3)   # the third view (of K >= 3)
    """

    def __init__(self, views: Sequence[ArrayDataset], batch_size: int, *, shuffle: bool, seed: int,
                 **batch_options: Any) -> None:
        self.iterators = [BatchIterator(view, batch_size, shuffle=shuffle, seed=seed, **batch_options)
                          for view in views]
        self.size = len(views[0])
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for iterator in self.iterators:
            iterator.set_epoch(epoch)

    @property
    def view(self) -> int:
        return (self.epoch - 1) % len(self.iterators)

    def __iter__(self) -> Iterator:
        offset = self.view * self.size
        for batch in self.iterators[self.view]:
            yield replace(batch, indices=batch.indices + offset)

    def __len__(self) -> int:
        return len(self.iterators[0])
