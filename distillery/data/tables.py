"""Tabular data from a .csv or .parquet file: numeric feature columns and one label column.

Features are read as they are (float32 ``[N, F]``); scaling is left to the pipeline's normaliser, fitted on
the training split only, so that no statistic of the test rows leaks into training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillery.data.dataset import ArrayDataset
from distillery.data.sources import DATASETS
from distillery.data.transforms import stratified_split
from distillery.errors import ConfigError, DataError

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


@DATASETS.register("csv")
@DATASETS.register("parquet")
def load_table(
    path: str | Path,
    *,
    label_column: str = "label",
    feature_columns: list[str] | None = None,
    test_path: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) splits of a table; inputs float32 ``[N, F]`` (unscaled), labels int64 ``[N]``.

    ``feature_columns`` default to every column but ``label_column``; each must be numeric (integers,
    floats or booleans) with no missing value. Class names are the label column's distinct values, sorted
    (numbers numerically, written as text: 3 and 3.0 both as "3"), or ``class_names`` in label order. The
    test split is the rows of ``test_path`` if given, else a seeded ``test_fraction`` of every class.

    Raises DataError for a missing or unreadable file, an unknown extension, a missing column (the columns
    are listed), an empty table, a non-numeric feature (with an example value), a missing value (with its
    1-based data row), a label not in ``class_names``, or fewer than 2 classes.

    Example::

        train, test = load_table("wine.csv", label_column="quality")
        train.input_shape  # (11,)
    """
    if path is None:
        raise ConfigError("a table dataset needs data.path: a .csv or .parquet file")
    table = read_table(path)
    features = _feature_columns(table, label_column, feature_columns, path)
    inputs, values = _feature_matrix(table, features, path), _label_values(table, label_column, path)
    if test_path is None:
        test_inputs = test_values = None
    else:
        test_table = read_table(test_path)
        _require_columns(test_table, [*features, label_column], test_path)
        test_inputs = _feature_matrix(test_table, features, test_path)
        test_values = _label_values(test_table, label_column, test_path)
    names, labels = class_labels(values, class_names, path)
    if len(np.unique(labels)) < 2:
        raise DataError(f"{path} has only the class {names[int(labels[0])]!r} in column {label_column!r}; "
                        "a classifier needs at least 2 classes: check label_column")
    if test_path is None:
        train_rows, test_rows = stratified_split(labels, test_fraction, seed)
        return (_dataset(inputs[train_rows], labels[train_rows], names, f"{path} (train)"),
                _dataset(inputs[test_rows], labels[test_rows], names, f"{path} (test)"))
    if class_names is None:  # one label space for both files, as the IDX reader does for its two splits
        names, both = class_labels(_joined(values, test_values), None, path)
        labels, test_labels = both[: len(values)], both[len(values):]
    else:
        test_labels = class_labels(test_values, names, test_path)[1]
    return _dataset(inputs, labels, names, str(path)), _dataset(test_inputs, test_labels, names, str(test_path))


def read_table(path: str | Path):
    """The whole file as a ``pyarrow.Table``. Example: ``table = read_table("iris.parquet")``.

    Raises DataError for a missing, empty or unreadable file, or an extension other than .csv, .csv.gz,
    .parquet or .pq.
    """
    import pyarrow as pa  # deferred: pyarrow takes a while to import and only tables need it

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"table {path} does not exist; check the data path")
    name = path.name.lower()
    if not name.endswith(TABLE_SUFFIXES):
        raise DataError(f"{path} is neither CSV nor Parquet; use a file ending in {', '.join(TABLE_SUFFIXES)}")
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as parquet

            table = parquet.read_table(path)
        else:
            import pyarrow.csv as csv

            table = csv.read_csv(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"cannot read {path} ({str(error).splitlines()[0]}); check that it is a valid table") from None
    if table.num_rows == 0:
        raise DataError(f"table {path} has no data rows; point the data path at a file with rows")
    return table


def _require_columns(table, columns: list[str], path: str | Path) -> None:
    for column in columns:
        if column not in table.column_names:
            raise DataError(f"{path} has no column {column!r}; its columns are {', '.join(table.column_names)}")


def _feature_columns(table, label_column: str, feature_columns: list[str] | None, path: str | Path) -> list[str]:
    _require_columns(table, [label_column], path)
    if feature_columns is None:
        features = [column for column in table.column_names if column != label_column]
    elif isinstance(feature_columns, str):
        raise ConfigError(f"feature_columns must be a list of column names, not the string {feature_columns!r}")
    else:
        features = [str(column) for column in feature_columns]
        _require_columns(table, features, path)
        if label_column in features:
            raise ConfigError(f"feature_columns include the label column {label_column!r}; remove it from them")
    if not features:
        raise DataError(f"{path} has no feature columns besides {label_column!r}; add numeric feature columns")
    return features


def _feature_matrix(table, features: list[str], path: str | Path) -> np.ndarray:
    """float32 ``[N, F]``; every column numeric and finite, else a DataError naming the column and row."""
    import pyarrow as pa

    columns = []
    for name in features:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type) or pa.types.is_decimal(column.type)
                or pa.types.is_null(column.type)):
            raise DataError(f"feature column {name!r} in {path} is not numeric ({_non_numeric_example(column)}); "
                            "encode it as numbers or leave it out of feature_columns")
        values = column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            found = "empty" if column[int(bad[0])].as_py() is None else f"{values[bad[0]]} as float32"
            raise DataError(f"feature column {name!r} in {path} has no usable value at data row {bad[0] + 1} "
                            f"({found}); fill or drop that row")
        columns.append(values)
    return np.stack(columns, axis=1)


def _non_numeric_example(column) -> str:
    for row, value in enumerate(column.to_pylist(), start=1):
        if value is None:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return f"data row {row} holds {value!r}"
    return f"it is {column.type}"


def _label_values(table, label_column: str, path: str | Path) -> np.ndarray:
    """The label column as numbers, or as text (object array) when it is not numeric."""
    values = table.column(label_column).to_numpy(zero_copy_only=False)
    if values.dtype.kind not in "biuf":
        # CSV reads an empty text cell as "", not null: for a label both mean that it is missing.
        values = np.array(["" if value is None else str(value).strip() for value in values], dtype=object)
        missing = np.flatnonzero(values == "")
    else:
        missing = np.flatnonzero(np.isnan(values)) if values.dtype.kind == "f" else []
    if len(missing):
        raise DataError(f"label column {label_column!r} in {path} is empty at data row {missing[0] + 1}; "
                        "fill or drop that row")
    return values


def _joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    # Numbers in both files stay numbers (sorted as such); otherwise both are compared as text.
    if first.dtype != object and second.dtype != object:
        return np.concatenate([first, second])
    return np.concatenate([np.array([_as_name(v) for v in part], dtype=object) for part in (first, second)])


def _as_name(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def class_labels(values: np.ndarray, class_names: list[str] | None, path: str | Path) -> tuple[list[str], np.ndarray]:
    """Class names and int64 labels ``[N]`` for label ``values``; given names must cover every value."""
    distinct, inverse = np.unique(values, return_inverse=True)
    distinct_names = [_as_name(value) for value in distinct]
    if class_names is None:
        return distinct_names, inverse.astype(np.int64).reshape(-1)
    if isinstance(class_names, str):
        raise ConfigError(f"class_names must be a list of names, not the string {class_names!r}")
    names = [str(name) for name in class_names]
    unknown = [name for name in distinct_names if name not in names]
    if unknown:
        raise DataError(f"{path} has the label {unknown[0]!r}, which is not in class_names {names}; "
                        "add it to class_names or drop its rows")
    index = np.array([names.index(name) for name in distinct_names], dtype=np.int64)
    return names, index[inverse.reshape(-1)]


def _dataset(inputs: np.ndarray, labels: np.ndarray, names: list[str], source: str) -> ArrayDataset:
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(labels), names, source)
