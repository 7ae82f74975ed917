"""A run's training batches, and where the teacher's outputs come from: live, cached, or cached views.

The teacher is the expensive half of a distillation step. When every epoch shows it the same inputs
(no random augmentation) its logits are computed once and kept in the teacher-output cache; with random
augmentation the teacher runs live on every batch, unless ``teacher_views`` fixes K seeded augmented
views of the transfer set, whose outputs are cached like plain inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from torch import nn

from distillery.data import ArrayDataset, Augmentation, BatchIterator
from distillery.data.views import ViewBatches, augmented_views, view_description
from distillery.teachers.cache import cached_teacher_logits
from distillery.teachers.precomputed import precompute_logits


@dataclass
class TransferPlan:
    batches: Iterable                 # what the student trains on
    teacher_logits: Any = None        # looked up by sample index, or None: the teacher runs live
    note: str | None = None           # where the teacher's outputs came from, for the user


def _offset_batches(views: list[ArrayDataset], transform: Callable | None) -> Iterator:
    # Every view in order, indices offset by view · N, as ViewBatches addresses them.
    for number, view in enumerate(views):
        for inputs, labels, indices in BatchIterator(view, 512, transform=transform):
            yield inputs, labels, indices + number * len(view)


def plan_transfer(train: ArrayDataset, teacher: nn.Module | None, *, augmentation: Augmentation,
                  transform: Callable | None, batch_size: int, seed: int, label_options: dict[str, Any],
                  teacher_table: bool, cache: str = "auto", views: int | None = None,
                  preprocessing: dict[str, Any] | None = None, cache_dir: Path | None = None,
                  rebuild: bool = False) -> TransferPlan:
    """The student's batches, and the teacher's logits table when ``teacher_table`` (the method can use one).

    ``cache``: "auto" (a shared cache directory, entries named by fingerprint), "off" (computed in
    memory for this run only) or a file path stem (used only if its fingerprint matches).
    """
    live = BatchIterator(train, batch_size, shuffle=True, seed=seed, augmentation=augmentation,
                         transform=transform, **label_options)
    if teacher is None or not teacher_table or (augmentation.enabled and not views):
        return TransferPlan(live)
    if augmentation.enabled:
        view_sets = augmented_views(train, augmentation, views, seed)
        batches: Iterable = ViewBatches(view_sets, batch_size, shuffle=True, seed=seed, transform=transform,
                                        **label_options)
        ordered: Iterable = _offset_batches(view_sets, transform)  # read once, and only if not cached
        size, view = len(train) * views, [view_description(augmentation, seed, v) for v in range(views)]
    else:
        batches, ordered = live, BatchIterator(train, 512, transform=transform)
        size, view = len(train), None
    if cache == "off":
        return TransferPlan(batches, precompute_logits(teacher, ordered, size),
                            "teacher outputs computed once for this run (teacher_cache: off)")
    stem = None if cache == "auto" else Path(cache)
    table, note = cached_teacher_logits(teacher, train.inputs, ordered, size, stem=stem,
                                        preprocessing=preprocessing, view=view, cache_dir=cache_dir, rebuild=rebuild)
    return TransferPlan(batches, table, note)

