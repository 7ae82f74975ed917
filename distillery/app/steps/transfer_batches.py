"""Build step 4, the transfer batches: a run's training batches, and where the teacher's outputs come from: live, cached, or cached views.

The teacher is the expensive half of a distillation step. When every epoch shows it the same inputs
(no random augmentation) its logits, and the features a feature method reads, are computed once and
kept in the teacher-output cache; with random augmentation the teacher runs live on every batch,
unless ``teacher_views`` fixes K seeded augmented views of the transfer set, whose outputs are cached
like plain inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from distillery.app.config import RunConfig
from distillery.app.config.sections import TEXT_DATASETS
from distillery.app.steps.prepared_data import PreparedData, label_options
from distillery.app.steps.load_teachers import teacher_feature_paths, teachers_and_data
from distillery.data import ArrayDataset, Augmentation, BatchIterator
from distillery.data.views import ViewBatches, augmented_views, view_description
from distillery.engine import resolve_device
from distillery.errors import ConfigError
from distillery.methods import Method
from distillery.teachers.cache import cached_teacher_logits
from distillery.teachers.feature_cache import cached_teacher_outputs
from distillery.teachers.from_config import LoadedTeacher
from distillery.teachers.inputs import pipeline_description
from distillery.teachers.outputs_table import OutputsTable
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
        for batch in BatchIterator(view, 512, transform=transform):
            yield replace(batch, indices=batch.indices + number * len(view))


def plan_transfer(train: ArrayDataset, teacher: nn.Module | None, *, augmentation: Augmentation,
                  transform: Callable | None, batch_size: int, seed: int, label_options: dict[str, Any],
                  teacher_table: bool, cache: str = "auto", views: int | None = None,
                  preprocessing: dict[str, Any] | None = None, cache_dir: Path | None = None,
                  rebuild: bool = False, teacher_layers: Sequence[str] = (),
                  feature_budget_mb: float = 1024.0, mix: str | None = None) -> TransferPlan:
    """The student's batches, and the teacher's logits table when ``teacher_table`` (the method can use one).

    ``cache``: "auto" (a shared cache directory, entries named by fingerprint), "off" (computed in
    memory for this run only) or a file path stem (used only if its fingerprint matches).
    ``teacher_layers``: module paths of the teacher features the method reads; their outputs are cached
    too (up to ``feature_budget_mb`` megabytes), and with ``cache`` "off" the teacher runs live.
    ``mix`` ("mixup"): the ``views`` are mixed too (function matching), so they differ even without augmentation.
    """
    live = BatchIterator(train, batch_size, shuffle=True, seed=seed, augmentation=augmentation,
                         transform=transform, **label_options)
    mixed = mix not in (None, "none")
    if teacher is None or not teacher_table or ((augmentation.enabled or mixed) and not views):
        return TransferPlan(live)
    if augmentation.enabled or mixed:
        view_sets = augmented_views(train, augmentation, views, seed, mix)
        batches: Iterable = ViewBatches(view_sets, batch_size, shuffle=True, seed=seed, transform=transform,
                                        **label_options)
        ordered: Iterable = _offset_batches(view_sets, transform)  # read once, and only if not cached
        size, view = len(train) * views, [view_description(augmentation, seed, v, mix) for v in range(views)]
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


def transfer_plan(config: RunConfig, data: PreparedData, teachers: list[LoadedTeacher], teacher: nn.Module | None,
                   rebuild: bool = False) -> TransferPlan:
    distill = config.distill
    uses_features = distill is not None and distill.needs.teacher_features
    uses_table = distill is not None and (distill.needs.teacher_logits or uses_features)
    if isinstance(teacher, OutputsTable):
        return given_outputs_plan(config, data, teacher, uses_table and not uses_features)
    if distill is not None and distill.teacher_views and not uses_table:
        raise ConfigError(f"teacher_views caches the teacher's outputs, which method {distill.method!r} does not "
                          "read from a cache; remove teacher_views")
    options, train = label_options(config.transfer, len(data.train)), data.train
    if distill is None and "labeled" in options:
        # Without a teacher the unlabelled samples teach nothing: the student trains on the labelled ones alone,
        # the same samples a distilled student of the same config keeps the labels of.
        train, options = train.subset(torch.nonzero(options["labeled"]).squeeze(1)), {}
    return plan_transfer(train, teacher, augmentation=data.augmentation, transform=data.normalizer,
                         batch_size=config.train.batch_size, seed=config.seed,
                         label_options=options, teacher_table=uses_table,
                         cache=distill.teacher_cache if distill else "off",
                         views=distill.teacher_views if distill else None,
                         preprocessing=pipeline_description(
                             data.normalizer, [loaded.metadata.get("preprocessing") for loaded in teachers]),
                         rebuild=rebuild,
                         teacher_layers=teacher_feature_paths(config, teacher) if uses_features else (),
                         feature_budget_mb=distill.feature_cache_mb if distill else 0.0,
                         mix=distill.options.view_mix() if distill else None)


def given_outputs_plan(config: RunConfig, data: PreparedData, teacher: OutputsTable, logit_method: bool
                       ) -> TransferPlan:
    """The transfer set in its fixed order of samples, with the teacher's outputs read from a file."""
    if data.augmentation.enabled:
        raise ConfigError(f"the teacher {teacher.source} is given as outputs on the plain transfer set, so it has "
                          "none for augmented views; turn data.augment off")
    if not logit_method:
        raise ConfigError(f"the teacher {teacher.source} is given as outputs, which method "
                          f"{config.distill.method!r} cannot use; use hinton, logit_mse, dkd or dist")
    batches = BatchIterator(data.train, config.train.batch_size, shuffle=True, seed=config.seed,
                            transform=data.normalizer, **label_options(config.transfer, len(data.train)))
    return TransferPlan(batches, teacher.logits, f"teacher outputs read from {teacher.source}")


def build_teacher_cache(config: RunConfig, *, rebuild: bool = False) -> str:
    """Compute the teacher's outputs on the config's transfer set ahead of the run and cache them.

    Example::

        print(build_teacher_cache(load_config("configs/fashion_mnist_distill.yaml")))
    """
    distill = config.distill
    if config.data.dataset in TEXT_DATASETS:
        raise ConfigError("text runs cache their teacher's targets with distillery.app.workflows.cache_targets")
    if distill is None or not distill.teacher:
        raise ConfigError("a teacher cache needs a distill: section that names a teacher")
    if distill.teacher_cache == "off":
        raise ConfigError("distill.teacher_cache is off; set it to auto or a file path to build a cache")
    if config.data.augment.enabled and not distill.teacher_views:
        raise ConfigError("data.augment draws new images every epoch, so the teacher runs live; set "
                          "distill.teacher_views: K to cache K fixed augmented views")
    teachers, data, teacher = teachers_and_data(config)
    plan = transfer_plan(config, data, teachers, teacher, rebuild=rebuild)
    if distill.needs.teacher_features and plan.teacher_features is None:
        raise ConfigError(f"{plan.note} (e.g. --set distill.feature_cache_mb=N)")
    return plan.note


def run_teacher_once(method: Method, teacher: nn.Module, train_data: Any, device: str = "auto") -> None:
    """Give ``method`` the teacher's logits over a deterministic transfer set (an ArrayDataset, or a
    BatchIterator whose augmentation is off), placed by sample index; other data (a DataLoader, augmented
    batches) leaves the teacher running live."""
    if isinstance(train_data, ArrayDataset):
        dataset, transform = train_data, None
    elif isinstance(train_data, BatchIterator) and (train_data.augmentation is None
                                                    or not train_data.augmentation.enabled):
        dataset, transform = train_data.dataset, train_data.transform
    else:
        return
    # Function matching mixes each batch anew: its teacher must see those mixtures, not the plain samples.
    if method.needs.teacher_logits and not getattr(method, "mixes_batches", False):
        teacher.to(resolve_device(device))
        method.use_precomputed_teacher_logits(
            precompute_logits(teacher, BatchIterator(dataset, 512, transform=transform), len(dataset)))
