"""The user's own ``torch.utils.data.Dataset``s, built by a factory their config names, read once into memory."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from distillery.data.dataset import ArrayDataset
from distillery.data.sources import DATASETS
from distillery.errors import ConfigError, DataError
from distillery.user_code import import_function, user_code

PROGRESS_ABOVE = 2000  # samples; fewer are read in about a second


@DATASETS.register("python")
def load_python_dataset(path: str | Path | None = None, *, factory: str | None = None,
                        factory_options: Mapping[str, Any] | None = None,
                        class_names: Sequence[str] | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """``factory(**factory_options)`` (``package.module:function``; the folder the command runs in is importable)
    returns ``(train, test)`` Datasets of ``(inputs, label)`` samples; each is read once into an ArrayDataset
    (inputs float32 ``[N, ...]``, labels int64 ``[N]``). Class names: ``class_names``, else the train dataset's
    ``classes`` attribute (as torchvision's have), else ``"0"`` .. ``"K-1"``. ``path`` is not used.

    Raises ConfigError without a factory; ModelError when it cannot be imported; DataError for a factory that
    raises or returns something else, or samples that are not ``(tensor, int)`` of one shape.

    Example::

        train, test = load_python_dataset(factory="my_data:make_datasets", factory_options={"root": "data/"})
    """
    if factory is None:
        raise ConfigError("dataset 'python' needs data.factory: a package.module:function returning (train, test) "
                          "torch Datasets")
    function = import_function(factory, "dataset factory", DataError)
    with user_code(f"dataset factory {factory!r}", DataError):
        made = function(**dict(factory_options or {}))
    if not isinstance(made, (tuple, list)) or len(made) != 2:
        raise DataError(f"dataset factory {factory!r} returned {type(made).__name__}; it must return (train, test)")
    names = [str(name) for name in class_names] if class_names else getattr(made[0], "classes", None)
    sources = f"{factory} (train)", f"{factory} (test)"
    (train_x, train_y), (test_x, test_y) = (_read(split, source) for split, source in zip(made, sources))
    top = int(max(train_y.max(), test_y.max())) + 1
    names = [str(name) for name in names] if names else [str(index) for index in range(top)]
    return ArrayDataset(train_x, train_y, names, sources[0]), ArrayDataset(test_x, test_y, names, sources[1])


def _read(dataset: Any, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of a map-style Dataset, stacked: inputs ``[N, ...]`` and labels ``[N]``."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise DataError(f"{source} is a {type(dataset).__name__}, not a Dataset with __len__ and __getitem__")
    kind = type(dataset).__name__
    with user_code(f"{source}: {kind}.__len__()", DataError):
        size = len(dataset)
    if size == 0:
        raise DataError(f"{source} is empty")
    inputs, labels = [], []
    for index in tqdm(range(size), desc=f"reading {source}", disable=size <= PROGRESS_ABOVE, leave=False):
        with user_code(f"{source}: {kind}.__getitem__({index})", DataError):
            sample = dataset[index]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise DataError(f"{source} sample {index} is {type(sample).__name__}; samples must be (inputs, label)")
        features, label = torch.as_tensor(sample[0], dtype=torch.float32), sample[1]
        if inputs and features.shape != inputs[0].shape:
            raise DataError(f"{source} sample {index} has inputs of shape {tuple(features.shape)}, sample 0 has "
                            f"{tuple(inputs[0].shape)}; every sample must have one shape")
        inputs.append(features)
        labels.append(int(label))
    return torch.stack(inputs), torch.tensor(labels, dtype=torch.int64)
