"""The one in-memory dataset type every loader returns and every trainer consumes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distillery.data.memmap import MemmapInputs
from distillery.errors import DataError


@dataclass(eq=False)  # tensor fields make field-wise == ambiguous; identity is the useful equality
class ArrayDataset:
    """Inputs, integer labels and class names held as whole tensors.

    `inputs` is float32 `[N, C, H, W]` for images (values in [0, 1] after loading)
    or `[N, F]` for tabular data, a tensor or :class:`MemmapInputs` (read from disk per batch);
    `labels` is int64 `[N]`. Construction validates
    both and raises `DataError` naming `source`. Example::

        ds = ArrayDataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1]), ["a", "b", "c"], "toy")
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        self.class_names = [str(name) for name in self.class_names]
        self.inputs = _checked_inputs(self.inputs, self._where)
        self.labels = _checked_labels(self.labels, len(self.inputs), self._where)
        _check_label_range(self.labels, self.class_names, self._where)

    @property
    def _where(self) -> str:
        return self.source or "the dataset"

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. `(1, 28, 28)` or `(64,)`."""
        return tuple(self.inputs.shape[1:])

    def subset(self, indices: torch.Tensor) -> "ArrayDataset":
        """The samples at `indices`, in that order (inputs on disk stay there). Example: `ds.subset(torch.arange(100))`."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.inputs.device)
        inputs = self.inputs.take(indices) if isinstance(self.inputs, MemmapInputs) else self.inputs[indices]
        return ArrayDataset(inputs, self.labels[indices.to(self.labels.device)], list(self.class_names), self.source)

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, source={self.source!r})"
        )


def _checked_inputs(inputs: torch.Tensor | MemmapInputs, where: str) -> torch.Tensor | MemmapInputs:
    if isinstance(inputs, MemmapInputs):
        return _checked_memmap(inputs, where)
    if not isinstance(inputs, torch.Tensor):
        raise DataError(f"inputs in {where} are a {type(inputs).__name__}, not a tensor; convert them with torch.as_tensor")
    if inputs.dim() < 2:
        raise DataError(
            f"inputs in {where} have shape {tuple(inputs.shape)}; expected [N, F] (tabular) or [N, C, H, W] (images)"
        )
    if len(inputs) == 0:
        raise DataError(f"{where} has no samples; point the data path at a non-empty dataset")
    if not inputs.is_floating_point():
        raise DataError(
            f"inputs in {where} are {inputs.dtype}, not floating point; scale them to float32 "
            "(e.g. uint8 images / 255) before building the dataset"
        )
    # One dtype everywhere keeps models, caches and normalisers from disagreeing.
    inputs = inputs.to(torch.float32)
    if not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).flatten(1).any(dim=1).sum())
        raise DataError(f"inputs in {where} contain NaN or Inf in {bad} samples; clean or drop those samples")
    return inputs


def _checked_memmap(inputs: MemmapInputs, where: str) -> MemmapInputs:
    if len(inputs) == 0:
        raise DataError(f"{where} has no samples; point the data path at a non-empty dataset")
    if inputs.source.array.dtype != np.uint8:  # uint8 cannot hold NaN; floats are checked a chunk at a time
        for start, chunk in zip(range(0, len(inputs), inputs.chunk_rows), inputs.chunks()):
            bad = (~torch.isfinite(chunk)).flatten(1).any(dim=1)
            if bool(bad.any()):
                raise DataError(f"inputs in {where} contain NaN or Inf (sample {start + int(bad.nonzero()[0])} is "
                                "the first); clean or drop those samples")
    return inputs


def _checked_labels(labels: torch.Tensor, count: int, where: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"labels in {where} are a {type(labels).__name__}, not a tensor; convert them with torch.as_tensor")
    if labels.dim() != 1:
        raise DataError(f"labels in {where} have shape {tuple(labels.shape)}; expected one class index per sample [N]")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"labels in {where} are {labels.dtype}; expected integer class indices (int64)")
    if len(labels) != count:
        raise DataError(f"{where} has {count} inputs but {len(labels)} labels; every input needs exactly one label")
    return labels.to(torch.int64)


def _check_label_range(labels: torch.Tensor, class_names: list[str], where: str) -> None:
    if not class_names:
        raise DataError(f"{where} has no class names; give one name per class")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"labels in {where} go down to {low}; class indices must be >= 0")
    if high >= len(class_names):
        raise DataError(
            f"labels in {where} go up to {high} but only {len(class_names)} class names are given; "
            f"give at least {high + 1} class names or fix the labels"
        )
