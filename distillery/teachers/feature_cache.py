"""Cached teacher features: the outputs of the teacher layers a feature method reads, kept on disk beside its logits.

Each layer is a cache of its own (see :mod:`distillery.teachers.cache`): a float16 ``.npy`` array of
shape [N, *feature shape], opened memory-mapped, and a manifest whose fingerprint is the logit cache's
plus the layer's module path. A method that reads other layers finds no file for them and builds
those; a file whose recorded layer differs is refused. Features can be large (64 × 7 × 7 per image
over 60 000 images is 376 MB), so a budget bounds what is cached; beyond it the teacher runs live.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from distillery.errors import CheckpointError
from distillery.models.hooks import probe_feature_shapes, resolve_module
from distillery.teachers.cache import (
    CacheFiles,
    cache_key,
    default_cache_dir,
    fingerprint,
    open_cache,
    read_cache,
    reusable_cache,
    save_cache,
    write_cache,
)
from distillery.teachers.precomputed import precompute_outputs

MEGABYTE = 1_000_000
FLOAT16_BYTES = 2


class FeatureTable:
    """A teacher layer's outputs looked up by sample index, from a (memory-mapped) float16 array, as float32.

    Example::

        table[torch.tensor([4, 0])]   # [2, C, H, W]
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[np.asarray(indices)])).float()


@dataclass
class TeacherOutputs:
    """The teacher's logits and features by sample index (``features`` None: the teacher runs live), and
    a line saying where they came from."""

    logits: Any
    features: dict[str, Any] | None
    note: str


def layer_files(stem: Path | None, cache_dir: Path, parts: dict[str, str], layer: str) -> CacheFiles:
    """Where ``layer``'s features are cached: beside an explicit ``stem`` (``<stem>-<layer>``, dots made
    underscores, since a suffix would be cut), else in ``cache_dir`` under the fingerprint with the layer."""
    if stem is None:
        return CacheFiles(cache_dir / cache_key({**parts, "layer": layer}))
    return CacheFiles(stem.with_name(f"{stem.stem}-{re.sub(r'[^A-Za-z0-9_-]', '_', layer)}"))


def feature_megabytes(teacher: nn.Module, layers: Sequence[str], input_shape: Sequence[int], size: int) -> float:
    """The float16 size of ``layers``' outputs over ``size`` samples, found with one dummy forward."""
    shapes = probe_feature_shapes(teacher, layers, "teacher", input_shape)
    return sum(size * math.prod(shape[1:]) * FLOAT16_BYTES for shape in shapes) / MEGABYTE


def write_feature_cache(files: CacheFiles, features: torch.Tensor, parts: dict[str, str], layer: str) -> None:
    """Store one layer's float16 features [N, ...] with the fingerprint ``parts`` extended by ``layer``."""
    save_cache(files, features.to(torch.float16).numpy(), {"fingerprint": {**parts, "layer": layer}, "layer": layer})


def open_feature_cache(files: CacheFiles, parts: dict[str, str], layer: str) -> FeatureTable:
    """The cached features of ``layer`` if the fingerprint matches; otherwise a CheckpointError naming what changed."""
    return FeatureTable(read_cache(files, {**parts, "layer": layer})[1])


def cached_teacher_outputs(teacher: nn.Module, inputs: torch.Tensor, batches: Iterable, size: int, *,
                           layers: Sequence[str], budget_mb: float, stem: Path | None,
                           preprocessing: dict[str, Any] | None, view: Any = None, cache_dir: Path | None = None,
                           rebuild: bool = False) -> TeacherOutputs:
    """The teacher's logits and its features at ``layers`` for every index ``batches`` yields: read from valid
    caches, the missing ones computed in one pass over ``batches`` and cached. Arguments as for
    :func:`~distillery.teachers.cache.cached_teacher_logits`, plus the layers' module paths and the most
    megabytes their cached features may take; beyond it, or beyond float16's range, nothing is computed or
    cached and ``features`` is None: the teacher runs live.

    Example::

        outputs = cached_teacher_outputs(teacher, train.inputs, ordered, len(train), layers=["features.1"],
                                         budget_mb=1024, stem=None, preprocessing=normalizer.to_dict())
    """
    layers = list(layers)
    megabytes = feature_megabytes(teacher, layers, tuple(inputs.shape[1:]), size)
    if megabytes > budget_mb:
        return TeacherOutputs(None, None, f"the teacher runs live every batch: its features at {', '.join(layers)} "
                                          f"would take {megabytes:.0f} MB cached, over distill.feature_cache_mb "
                                          f"({budget_mb:g}); raise it to cache them")
    parts = fingerprint(inputs, teacher, preprocessing, view)
    directory = cache_dir or default_cache_dir()
    logit_files = CacheFiles(stem if stem is not None else directory / cache_key(parts))
    files = {layer: layer_files(stem, directory, parts, layer) for layer in layers}
    where = f"{logit_files.stem.parent} (features: {megabytes:.3g} MB)"
    # Existing entries are opened first, so a stale one is refused before the teacher's pass, not after.
    explicit = stem is not None
    logit_table = reusable_cache(logit_files, parts, explicit=explicit, rebuild=rebuild)
    tables = {}
    for layer, entry in files.items():
        table = reusable_cache(entry, parts, explicit=explicit, rebuild=rebuild,
                               open_table=functools.partial(open_feature_cache, layer=layer))
        if table is not None:
            tables[layer] = table
    if logit_table is not None and len(tables) == len(files):
        return TeacherOutputs(logit_table, tables, f"teacher outputs read from the cache in {where}")
    return _compute_and_store(teacher, batches, size, parts, logit_files, files, logit_table, tables,
                              explicit=explicit, where=where)


def _compute_and_store(teacher: nn.Module, batches: Iterable, size: int, parts: dict[str, str],
                       logit_files: CacheFiles, files: dict[str, CacheFiles], logit_table: Any,
                       tables: dict[str, FeatureTable], *, explicit: bool, where: str) -> TeacherOutputs:
    """One teacher pass for logits and every layer; the entries not yet valid on disk are written."""
    logits, features = precompute_outputs(teacher, batches, size,
                                          {layer: resolve_module(teacher, layer, "teacher") for layer in files})
    overflowing = [layer for layer, table in features.items() if not bool(torch.isfinite(table).all())]
    if overflowing:
        return TeacherOutputs(None, None, f"the teacher runs live every batch: its features at "
                                          f"{', '.join(overflowing)} exceed float16's range, so they are not cached")
    try:
        # A valid entry is left alone: another run may be reading it memory-mapped.
        if logit_table is None:
            write_cache(logit_files, logits, parts)
        for layer in files.keys() - tables.keys():
            write_feature_cache(files[layer], features[layer], parts, layer)
    except OSError as error:
        if explicit:
            raise CheckpointError(f"cannot write the teacher cache {logit_files.stem} ({error.strerror}); "
                                  "choose a writable teacher_cache path") from None
        # The automatic cache is an optimisation: an unwritable cache directory must not stop the run.
        return TeacherOutputs(logits, features, f"teacher outputs computed once (not cached: "
                                                f"{logit_files.stem.parent} is not writable)")
    tables = {layer: open_feature_cache(entry, parts, layer) for layer, entry in files.items()}
    return TeacherOutputs(open_cache(logit_files, parts), tables, f"teacher outputs computed once and cached in {where}")
