"""Class subsets: transfer sets restricted to chosen classes, and datasets narrowed to a smaller label space."""
from __future__ import annotations

from typing import Sequence

import torch

from distillery.data.dataset import ArrayDataset
from distillery.errors import ConfigError, DataError


def _class_ids(dataset: ArrayDataset, names: Sequence[str | int], setting: str) -> set[int]:
    ids = set()
    for name in names:
        name = str(name)  # YAML reads a class named 3 as the number 3
        if name not in dataset.class_names:
            raise ConfigError(f"{setting} names class {name!r}, which {dataset.source or 'the data'} does not have; "
                              f"its classes are: {', '.join(dataset.class_names)}")
        ids.add(dataset.class_names.index(name))
    return ids


def filter_classes(dataset: ArrayDataset, keep: Sequence[str | int] | None = None,
                   drop: Sequence[str | int] | None = None) -> ArrayDataset:
    """The samples of ``dataset`` whose class is in ``keep`` (all when None) and not in ``drop``.

    Class names and the label space are unchanged: a student distilled on a transfer set without
    some class still predicts over every class, and can learn it from the teacher's soft targets.

    Example::

        transfer = filter_classes(train, drop=["3"])   # Hinton et al.'s MNIST transfer set without 3s
    """
    chosen = _class_ids(dataset, keep, "transfer.classes") if keep else set(range(dataset.num_classes))
    chosen -= _class_ids(dataset, drop or [], "transfer.exclude_classes")
    mask = torch.isin(dataset.labels, torch.tensor(sorted(chosen), dtype=dataset.labels.dtype))
    if not bool(mask.any()):
        raise DataError(f"the transfer set from {dataset.source or 'the data'} is empty after the class filter; "
                        "keep at least one class that has samples")
    return dataset.subset(mask.nonzero().squeeze(1))


def labeled_mask(size: int, fraction: float, seed: int) -> torch.Tensor:
    """A seeded boolean mask keeping the labels of round(``fraction`` · ``size``) samples (at least one).

    The rest of a transfer set is then learnt from the teacher's soft targets alone.

    Example::

        mask = labeled_mask(len(train), 0.1, seed=0)   # 10% labelled, 90% soft targets only
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the labelled fraction must be in (0, 1], got {fraction}")
    count = max(1, round(fraction * size))
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[torch.randperm(size, generator=generator)[:count]] = True
    return mask


def select_classes(dataset: ArrayDataset, names: Sequence[str | int], setting: str = "data.classes") -> ArrayDataset:
    """The samples of the named classes, relabelled 0..len(names)-1 in the dataset's class order.

    Unlike :func:`filter_classes` the label space shrinks: a model trained on the result predicts
    only these classes, and its checkpoint lists exactly them (a teacher for a label-space merge).

    Example::

        low = select_classes(train, ["0", "1", "2", "3", "4"])   # class_names ["0".."4"], labels 0..4
    """
    chosen = sorted(_class_ids(dataset, names, setting))
    relabel = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    relabel[chosen] = torch.arange(len(chosen))
    kept = (relabel[dataset.labels] >= 0).nonzero().squeeze(1)
    if len(kept) == 0:
        raise DataError(f"{dataset.source or 'the data'} has no samples of the classes in {setting}; "
                        "choose classes that have samples")
    subset = dataset.subset(kept)
    return ArrayDataset(subset.inputs, relabel[subset.labels], [dataset.class_names[i] for i in chosen],
                        dataset.source)
