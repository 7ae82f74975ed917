"""Inputs that stay on disk: a memory-mapped .npy array whose rows are read only when a batch asks for them.

A training set larger than memory then costs only the batches in flight: after every read the mapped pages
are released again (``madvise(MADV_DONTNEED)``; the kernel's page cache keeps them, not this process), so
the resident memory stays flat however much of the file an epoch sweeps through.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from distillery.errors import DataError

DTYPES = (np.uint8, np.float16, np.float32, np.float64)
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# Values read at once by whole-array passes (statistics, checks): 1 MB as float32. Small blocks, because the
# allocator keeps freed large blocks for reuse, and the resident memory would grow by several of them.
CHUNK_ELEMENTS = 1 << 18


class MemmapArray:
    """One .npy file mapped read-only; never unpickled (object arrays are refused by the header check)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} does not exist; check the data path")
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version not in HEADER_READERS:
                    raise ValueError(f".npy format version {version} is not supported")
                shape, fortran, dtype = HEADER_READERS[version](handle)
                offset = handle.tell()
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as error:
            raise DataError(f"cannot read {self.path} as .npy ({error}); save it with numpy.save of a plain array") from None
        if dtype.hasobject or dtype.type not in DTYPES or fortran or len(shape) < 2:
            raise DataError(f"{self.path} holds a {'Fortran-ordered ' if fortran else ''}{dtype} array of shape "
                            f"{shape}; expected a C-ordered uint8 or float array [N, ...]")
        self.array = np.frombuffer(self._mmap, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """A copy of the rows at ``indices``; the pages read for them are released from this process after."""
        order = np.argsort(indices, kind="stable")  # ascending reads: sequential on disk where they can be
        rows = np.empty((len(indices), *self.array.shape[1:]), dtype=self.array.dtype)
        rows[order] = self.array[indices[order]]
        if hasattr(mmap, "MADV_DONTNEED"):  # Linux and most Unixes; elsewhere the kernel reclaims them under pressure
            self._mmap.madvise(mmap.MADV_DONTNEED)
        return rows


class MemmapInputs:
    """Float32 inputs ``[N, C, H, W]`` or ``[N, F]`` backed by a :class:`MemmapArray`, optionally a subset of its rows.

    Indexing with a tensor of indices or a slice reads those samples (uint8 scaled to [0, 1], grey
    ``[N, H, W]`` images given one channel) and returns an ordinary tensor; :meth:`take` makes a lazy subset.

    Example::

        inputs = MemmapInputs(MemmapArray("x_train.npy"))
        batch = inputs[torch.tensor([5, 2, 9])]          # float32 [3, 1, 28, 28], read from disk now
    """

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, source: MemmapArray, rows: np.ndarray | None = None) -> None:
        self.source = source
        self.rows = rows  # positions in the file, or None for all of them
        sample = source.array.shape[1:]
        self.sample_shape = (1, *sample) if len(sample) == 2 else tuple(sample)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.sample_shape))

    def dim(self) -> int:
        return len(self.shape)

    def is_floating_point(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.source.array) if self.rows is None else len(self.rows)

    def _positions(self, index: torch.Tensor | slice) -> np.ndarray:
        wanted = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index.cpu(), dtype=np.int64)
        return wanted if self.rows is None else self.rows[wanted]

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        rows = self.source.rows(self._positions(index))
        batch = torch.from_numpy(rows).reshape(len(rows), *self.sample_shape)
        return batch.float().div_(255.0) if rows.dtype == np.uint8 else batch.float()

    def take(self, indices: torch.Tensor) -> "MemmapInputs":
        """The samples at ``indices``, still on disk."""
        return MemmapInputs(self.source, self._positions(indices))

    @property
    def chunk_rows(self) -> int:
        """How many samples :meth:`chunks` reads at once."""
        return max(1, CHUNK_ELEMENTS // int(np.prod(self.sample_shape)))

    def chunks(self) -> Iterator[torch.Tensor]:
        """Every sample in order, :attr:`chunk_rows` at a time, for whole-dataset passes in bounded memory."""
        size = self.chunk_rows
        for start in range(0, len(self), size):
            yield self[slice(start, start + size)]

    def __repr__(self) -> str:
        return f"MemmapInputs({self.source.path}, shape={tuple(self.shape)})"


def load_memmap_split(inputs_path: Path, labels_path: Path) -> tuple[MemmapInputs, np.ndarray]:
    """Memory-mapped inputs and their labels (read into memory: one integer per sample)."""
    inputs = MemmapInputs(MemmapArray(inputs_path))
    if not labels_path.is_file():
        raise DataError(f"{labels_path} does not exist; save the labels beside the inputs")
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"cannot read {labels_path} as .npy ({error}); save it with numpy.save of integers") from None
    return inputs, labels
