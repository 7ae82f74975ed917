"""A teacher's outputs computed elsewhere, read from a file and aligned with a transfer set's samples.

The file is data from anyone: ``.npy`` is read with ``allow_pickle=False`` and ``.parquet`` with pyarrow, so
nothing is unpickled and nothing in the file names code.
"""
from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Sequence

import numpy as np
import pyarrow
import pyarrow.parquet
import torch

from distillery.errors import ConfigError, DataError
from distillery.user_code import first_line

KINDS = ("auto", "logits", "probabilities")
SUM_TOLERANCE = 1e-3  # how far from 1 a row of probabilities may sum (files often store rounded values)
LIST_COLUMNS = ("logits", "probabilities")  # the names that pick a list column among several
_SMALLEST = float(np.finfo(np.float32).tiny)  # the log of a zero probability stays finite: about -87.3


def read_teacher_outputs(path: str | Path, *, size: int, ids: Sequence[Any] | None = None,
                         id_column: str | None = None, kind: str = "auto") -> torch.Tensor:
    """The teacher's logits for each of a transfer set's ``size`` samples: float32 ``[size, C]``, in its order.

    Files: ``.npy``, a numeric array ``[N, C]``; ``.parquet``, either one list column (named ``logits`` or
    ``probabilities``, or the only column besides the id column) or C numeric columns (every column but the id
    column, in file order). Rows are aligned by position (N must be ``size``), or, with ``id_column`` (parquet
    only), matched to ``ids`` (the transfer set's sample ids: file paths or row numbers, compared as text) in
    the order of ``ids``; the file may then hold more rows than the transfer set.

    ``kind``: ``"logits"``, ``"probabilities"``, or ``"auto"``: probabilities when every value is >= 0 and
    every row sums to 1 within 1e-3, else logits. Probabilities p become log-probabilities log p: the teacher's
    logits up to a constant per row (softmax's inverse), which softmax ignores, so softmax gives p back and
    softening at temperature T gives p^(1/T) renormalised, exactly what every loss on softened logits needs. A
    zero probability becomes the smallest positive float32 first, so every log is finite (about -87.3).

    Raises:
        DataError: (one line) a missing file, an unknown extension, a row count other than ``size`` when
            aligned by row, ids absent from the file or listed twice, a non-numeric column, NaN or infinite
            values (row named), declared probabilities with a row that does not sum to 1, fewer than 2 classes.
        ConfigError: an unknown ``kind``.

    Example::

        logits = read_teacher_outputs("teacher_outputs.parquet", size=len(train), ids=train_files,
                                      id_column="file", kind="probabilities")
    """
    if kind not in KINDS:
        raise ConfigError(f"outputs kind {kind!r} is unknown; choose one of: {', '.join(KINDS)}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"teacher outputs file {path} does not exist; give a .npy or .parquet file of its outputs")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"teacher outputs file {path} is neither .npy nor .parquet; save the outputs as one of them")
    values, file_ids = reader(path, id_column)
    if values.ndim != 2 or values.shape[1] < 2:
        raise DataError(f"{path} holds outputs of shape {values.shape}; give [N, C] with C >= 2 classes")
    rows = _file_rows(path, len(values), file_ids, size, ids, id_column)
    aligned = np.asarray(values[rows], dtype=np.float32)
    _check_finite(aligned, rows, path)
    if kind == "probabilities":
        _check_probabilities(aligned, rows, path)
    if kind == "logits" or (kind == "auto" and not _are_probabilities(aligned)):
        return torch.from_numpy(aligned)
    return torch.from_numpy(np.log(np.maximum(aligned, _SMALLEST)))


def _read_npy(path: Path, id_column: str | None) -> tuple[np.ndarray, None]:
    if id_column is not None:
        raise DataError(f"{path} is a .npy array and has no column {id_column!r}; its rows are aligned by row "
                        "(remove id_column, or write a .parquet file with an id column)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        # numpy's advice for a file it takes for a pickle is to unpickle it, which a file from anyone never is.
        reason = "not a .npy array, or one of Python objects" if "pickle" in str(error) else first_line(error)
        raise DataError(f"{path} is not a readable .npy array ({reason}); save a float array [N, C] with "
                        "numpy.save") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise DataError(f"{path} does not hold one numeric array; save a float array [N, C] with numpy.save")
    return array, None


def _read_parquet(path: Path, id_column: str | None) -> tuple[np.ndarray, list[str] | None]:
    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(f"{path} is not a readable parquet file ({first_line(error)})") from None
    names = table.column_names
    if id_column is not None and id_column not in names:
        raise DataError(f"{path} has no id column {id_column!r}; its columns are: {', '.join(names)}")
    file_ids = [_id_text(value) for value in table.column(id_column).to_pylist()] if id_column else None
    value_names = [name for name in names if name != id_column]
    list_names = [name for name in value_names if _is_list(table.schema.field(name).type)]
    if list_names:
        chosen = next((name for name in LIST_COLUMNS if name in list_names), None)
        if chosen is None and len(value_names) != 1:
            raise DataError(f"{path} has list columns {', '.join(list_names)} among others; name the outputs "
                            f"column {' or '.join(LIST_COLUMNS)}")
        return _list_column(table.column(chosen or value_names[0]), chosen or value_names[0], path), file_ids
    for name in value_names:
        field_type = table.schema.field(name).type
        if not (pyarrow.types.is_integer(field_type) or pyarrow.types.is_floating(field_type)):
            raise DataError(f"{path} has a non-numeric column {name!r} ({field_type}); keep only the id column "
                            "and one numeric column per class")
    columns = [table.column(name).to_numpy().astype(np.float64) for name in value_names]
    return np.stack(columns, axis=1) if columns else np.zeros((table.num_rows, 0)), file_ids


def _is_list(field_type: pyarrow.DataType) -> bool:
    return (pyarrow.types.is_list(field_type) or pyarrow.types.is_large_list(field_type)
            or pyarrow.types.is_fixed_size_list(field_type))


def _list_column(column: pyarrow.ChunkedArray, name: str, path: Path) -> np.ndarray:
    """A list column as ``[N, C]``: every row must hold the same number of numbers."""
    array = column.combine_chunks()
    value_type = array.type.value_type
    if not (pyarrow.types.is_integer(value_type) or pyarrow.types.is_floating(value_type)):
        raise DataError(f"{path} has a non-numeric column {name!r} (lists of {value_type}); give lists of floats")
    if array.null_count:
        raise DataError(f"{path} has {array.null_count} empty rows in column {name!r}; give every sample's outputs")
    lengths = np.asarray(array.value_lengths())
    if len(lengths) and not bool((lengths == lengths[0]).all()):
        row = int(np.argmax(lengths != lengths[0]))
        raise DataError(f"{path}: row {row} of column {name!r} holds {lengths[row]} values but row 0 holds "
                        f"{lengths[0]}; give every sample one value per class")
    flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(len(array), int(lengths[0]) if len(lengths) else 0)


def _id_text(value: Any) -> str:
    # Ids are compared as text, so a row number 3 matches "3" and a path matches its string.
    return value.as_posix() if isinstance(value, PurePath) else str(value)


def _file_rows(path: Path, rows: int, file_ids: list[str] | None, size: int, ids: Sequence[Any] | None,
               id_column: str | None) -> np.ndarray:
    """The file's row for each transfer sample, in the transfer set's order."""
    if file_ids is None:
        if rows != size:
            raise DataError(f"{path} has {rows} rows but the transfer set has {size} samples; outputs are aligned "
                            "by row; add an id column to align by id")
        return np.arange(size)
    if ids is None:
        raise DataError(f"id column {id_column!r} needs the transfer set's sample ids, and this data has none; "
                        "remove id_column to align by row")
    wanted = [_id_text(value) for value in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    if len(wanted) != size:
        raise ValueError(f"{len(wanted)} ids for a transfer set of {size} samples")  # a bug, not a user error
    position: dict[str, int] = {}
    repeated: dict[str, None] = {}  # ordered, each once
    for row, sample_id in enumerate(file_ids):
        if sample_id in position:
            repeated[sample_id] = None
        else:
            position[sample_id] = row
    if repeated:
        raise DataError(f"{path} lists {len(repeated)} sample ids more than once in column {id_column!r} (first: "
                        f"{', '.join(list(repeated)[:3])}); keep one row per sample")
    missing = [sample_id for sample_id in wanted if sample_id not in position]
    if missing:
        raise DataError(f"{path} lacks {len(missing)} of the transfer set's {size} sample ids in column "
                        f"{id_column!r} (first: {', '.join(missing[:3])}); add their rows")
    return np.asarray([position[sample_id] for sample_id in wanted], dtype=np.int64)


def _check_finite(values: np.ndarray, rows: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(values).all(axis=1)
    if bool(bad.any()):
        first = int(np.argmax(bad))
        found = "NaN (or missing)" if bool(np.isnan(values[bad]).any()) else "infinite"
        raise DataError(f"{path} has {found} outputs in {int(bad.sum())} of {len(values)} rows (row "
                        f"{int(rows[first])} first, counted from 0); recompute the teacher's outputs for them")


def _row_sums(values: np.ndarray) -> np.ndarray:
    return values.sum(axis=1, dtype=np.float64)


def _are_probabilities(values: np.ndarray) -> bool:
    return bool((values >= 0).all()) and bool((np.abs(_row_sums(values) - 1.0) <= SUM_TOLERANCE).all())


def _check_probabilities(values: np.ndarray, rows: np.ndarray, path: Path) -> None:
    sums = _row_sums(values)
    bad = (values < 0).any(axis=1) | (np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bool(bad.any()):
        first = int(np.argmax(bad))
        problem = "has a negative value" if bool((values[first] < 0).any()) else f"sums to {sums[first]:.6g}"
        raise DataError(f"{path} is declared probabilities but row {int(rows[first])} {problem}; probabilities are "
                        f">= 0 and sum to 1 (within {SUM_TOLERANCE:g}): use kind logits or auto, or fix that row")


READERS = {".npy": _read_npy, ".parquet": _read_parquet}
