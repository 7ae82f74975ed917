"""A run's training batches, and where the teacher's outputs come from: live, cached, or cached views.

The teacher is the expensive half of a distillation step. When every epoch shows it the same inputs
(no random augmentation) its logits, and the features a feature method reads, are computed once and
kept in the teacher-output cache; with random augmentation the teacher runs live on every batch,
unless ``teacher_views`` fixes K seeded augmented views of the transfer set, whose outputs are cached
like plain inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from torch import nn

from distillery.data import ArrayDataset, Augmentation, BatchIterator
from distillery.data.views import ViewBatches, augmented_views, view_description
from distillery.teachers.cache import cached_teacher_logits
from distillery.teachers.feature_cache import cached_teacher_outputs
from distillery.teachers.precomputed import precompute_logits


@dataclass
class TransferPlan:
    batches: Iterable                 # what the student trains on
    teacher_logits: Any = None        # looked up by sample index, or None: the teacher runs live
    note: str | None = None           # where the teacher's outputs came from, for the user
    teacher_features: dict[str, Any] | None = None  # by teacher layer path, looked up by sample index, or None

    def apply_to(self, method: Any) -> None:
        """Hand the method the teacher's precomputed outputs, if any: it then stops running the teacher for them.

        Example::

            plan = plan_transfer(train, teacher, ...)
            plan.apply_to(method)
        """
        if self.teacher_features is not None:
            method.use_precomputed_teacher_outputs(self.teacher_logits, self.teacher_features)
        elif self.teacher_logits is not None:
            method.use_precomputed_teacher_logits(self.teacher_logits)


def _offset_batches(views: list[ArrayDataset], transform: Callable | None) -> Iterator:
    # Every view in order, indices offset by view · N, as ViewBatches addresses them.
    for number, view in enumerate(views):
        for inputs, labels, indices in BatchIterator(view, 512, transform=transform):
            yield inputs, labels, indices + number * len(view)


def plan_transfer(train: ArrayDataset, teacher: nn.Module | None, *, augmentation: Augmentation,
                  transform: Callable | None, batch_size: int, seed: int, label_options: dict[str, Any],
                  teacher_table: bool, cache: str = "auto", views: int | None = None,
                  preprocessing: dict[str, Any] | None = None, cache_dir: Path | None = None,
                  rebuild: bool = False, teacher_layers: Sequence[str] = (),
                  feature_budget_mb: float = 1024.0) -> TransferPlan:
    """The student's batches, and the teacher's logits table when ``teacher_table`` (the method can use one).

    ``cache``: "auto" (a shared cache directory, entries named by fingerprint), "off" (computed in
    memory for this run only) or a file path stem (used only if its fingerprint matches).
    ``teacher_layers``: module paths of the teacher features the method reads; their outputs are cached
    too (up to ``feature_budget_mb`` megabytes), and with ``cache`` "off" the teacher runs live.
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
    stem = None if cache in ("auto", "off") else Path(cache)
    if teacher_layers:
        if cache == "off":
            return TransferPlan(batches, note="the teacher runs live every batch for its features (teacher_cache: off)")
        outputs = cached_teacher_outputs(teacher, train.inputs, ordered, size, layers=teacher_layers,
                                         budget_mb=feature_budget_mb, stem=stem, preprocessing=preprocessing,
                                         view=view, cache_dir=cache_dir, rebuild=rebuild)
        return TransferPlan(batches, outputs.logits, outputs.note, outputs.features)
    if cache == "off":
        return TransferPlan(batches, precompute_logits(teacher, ordered, size),
                            "teacher outputs computed once for this run (teacher_cache: off)")
    table, note = cached_teacher_logits(teacher, train.inputs, ordered, size, stem=stem,
                                        preprocessing=preprocessing, view=view, cache_dir=cache_dir, rebuild=rebuild)
    return TransferPlan(batches, table, note)
