"""Hugging Face ``datasets`` data with an image column (a ``save_to_disk`` folder, or .parquet/.jsonl files).

The images are decoded by the image folder reader's own functions into a ``[N, C, H, W]`` uint8 ``.npy`` cache
keyed by the dataset's fingerprint (for files: their paths, sizes and modification times) and the options;
later loads map that file and decode nothing. Inputs are :class:`MemmapInputs`, float32 in [0, 1] per batch.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distillery.cache_dir import default_cache_dir
from distillery.data.dataset import ArrayDataset
from distillery.data.image_folder import CACHE_FORMAT, checked_size, decoded_cache, existing_path, split_datasets
from distillery.data.memmap import MemmapArray, MemmapInputs
from distillery.data.sources import DATASETS
from distillery.data.tables import class_labels
from distillery.data.transforms import stratified_split
from distillery.errors import ConfigError, DataError

DATA_FILE_KINDS = {".parquet": "parquet", ".jsonl": "json"}  # suffix -> the datasets builder that reads it
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes at the top of its folder
# Bump when rows are read differently, so older caches are not reused (CACHE_FORMAT covers the decoding).
CACHE_TAG = "distillery-hf-images-1"
Splits = list[tuple[str, Any]]  # (split name, datasets.Dataset): train first; the name is "" for a lone split


@DATASETS.register("huggingface")
def load_hf_images(
    path: str | Path,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_names: list[str] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) splits of image data; inputs float32 ``[N, C, H, W]`` in [0, 1], labels int64 ``[N]``.

    The splits are a DatasetDict's "train" and "test" ("validation" when there is no "test"), or, for files,
    ``train*`` and ``test*`` (or ``validation*``) names; otherwise ``test_fraction`` of each class (seeded by
    ``seed``) becomes the test split. ``image_column`` defaults to the one ``Image`` column, else "image" or
    "img"; ``label_column`` to the one ``ClassLabel`` column, else "label" or "labels". Class names are the
    ClassLabel's names, else the distinct labels sorted (numbers numerically), or ``class_names`` in label
    order. ``image_size`` and ``channels`` act as in :func:`load_image_folder`. Image paths in files are
    relative to the files' folder. The decoded array, and the Arrow copy ``datasets`` makes of files, are
    cached under ``cache_dir`` (default as for image folders). Nothing is downloaded.

    Raises DataError for a missing or unreadable path, no image or label column (the columns are listed), a
    row without a label or an unreadable image (the row is named), or mixed sizes without ``image_size``;
    ConfigError for a bad option.

    Example::

        train, test = load_hf_images("beans/", image_size=64)   # a folder written by save_to_disk
        train.input_shape, train.class_names  # (3, 64, 64), ['angular_leaf_spot', 'bean_rust', 'healthy']
    """
    root = _root(path)
    size = checked_size(image_size)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels {channels!r} is not supported; use 1 (grey), 3 (RGB) or leave it unset")
    directory = _cache_directory(cache_dir)
    splits, origin = _read_splits(root, directory)
    image_column = _column(splits, image_column, "image", root)
    label_column = _column(splits, label_column, "label", root)
    names, labels = _class_labels(splits, label_column, class_names, root)
    if len(splits) == 1:  # split before decoding, so that a bad test_fraction fails at once
        train_rows, test_rows = stratified_split(labels, test_fraction, seed)
        sources = f"{root} (train)", f"{root} (test)"
    else:
        train_rows, test_rows = np.arange(len(splits[0][1])), np.arange(len(splits[0][1]), len(labels))
        sources = tuple(f"{root} ({name})" for name, _ in splits)
    images = _ImageRows(_undecoded(splits, image_column), image_column, root if root.is_dir() else root.parent, root)
    inputs = MemmapInputs(_cached_array(images, [origin, image_column], size, channels, directory))
    return split_datasets(inputs, labels, names, (train_rows, test_rows), sources)


def _root(path: str | Path | None) -> Path:
    return existing_path(path, "a huggingface dataset", "a save_to_disk folder or .parquet/.jsonl file(s)")


def _cache_directory(cache_dir: str | Path | None) -> Path:
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the cache directory {directory} ({error}); set cache_dir or "
                        "$DISTILLERY_CACHE to a writable directory") from None
    return directory


def _import_datasets():
    # Set before the first import, which reads them: a local path must never turn into a Hub download.
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets  # deferred: importing datasets takes about a second

    return datasets


def _read_splits(root: Path, directory: Path) -> tuple[Splits, list]:
    """The train split and maybe a test split, and what identifies their contents for the cache's fingerprint."""
    datasets = _import_datasets()
    from pyarrow import ArrowException

    try:
        if root.is_dir() and any((root / marker).is_file() for marker in SAVED_MARKERS):
            loaded, origin = datasets.load_from_disk(str(root)), None
        else:
            kind, data_files = _data_files(root)
            loaded = datasets.load_dataset(kind, data_files={split: [str(file) for file in files]
                                                             for split, files in data_files.items()},
                                           cache_dir=str(directory / "huggingface-datasets"))
            origin = [_stat(file) for files in data_files.values() for file in files]
    except (OSError, ValueError, ArrowException, datasets.exceptions.DatasetsError) as error:
        raise DataError(f"cannot read {root} as a Hugging Face dataset ({error.__cause__ or error}); point data.path "
                        "at a save_to_disk folder or at valid .parquet/.jsonl files") from None
    if isinstance(loaded, datasets.Dataset):
        splits = [("", loaded)]
    elif "train" not in loaded:
        raise DataError(f"{root} has the splits {list(loaded)} but no 'train'; save the training split as 'train'")
    else:
        test = next((name for name in ("test", "validation") if name in loaded), None)
        splits = [("train", loaded["train"]), (test, loaded[test])] if test else [("", loaded["train"])]
    # A save_to_disk folder rewritten in place may keep its fingerprint, not its files' modification times.
    return splits, origin or [[dataset._fingerprint, *(_stat(Path(f["filename"])) for f in dataset.cache_files)]
                              for _, dataset in splits]


def _stat(file: Path) -> list:
    stat = file.stat()
    return [str(file), stat.st_size, stat.st_mtime_ns]


def _data_files(root: Path) -> tuple[str, dict[str, list[Path]]]:
    """The datasets builder ("parquet" or "json") and the files of each split (all in "train" when unnamed)."""
    if root.is_file():
        files = [root]
    else:  # hidden folders (.git, .cache) hold tooling, not data
        files = sorted(file for file in root.rglob("*") if file.suffix.lower() in DATA_FILE_KINDS and file.is_file()
                       and not any(part.startswith(".") for part in file.relative_to(root).parts))
    kinds = {DATA_FILE_KINDS.get(file.suffix.lower()) for file in files}
    if not files or None in kinds:
        raise DataError(f"{root} is neither a save_to_disk folder (with {' or '.join(SAVED_MARKERS)}) nor .parquet "
                        "or .jsonl file(s); point data.path at one of them")
    if len(kinds) > 1:
        raise DataError(f"{root} holds both .parquet and .jsonl files; keep one kind of file in the folder")
    by_split: dict[str | None, list[Path]] = {}
    for file in files:
        words = [part.lower() for part in (*file.relative_to(root).parts[:-1], file.stem)] if root.is_dir() else []
        split = next((name for name in ("train", "test", "validation") if any(w.startswith(name) for w in words)), None)
        by_split.setdefault(split, []).append(file)
    test = "test" if "test" in by_split else "validation"
    if "train" in by_split and test in by_split and None not in by_split:
        return kinds.pop(), {"train": by_split["train"], test: by_split[test]}
    return kinds.pop(), {"train": files}


def _column(splits: Splits, wanted: str | None, kind: str, where: Path) -> str:
    """The image or label column: ``wanted``, else the one column of that feature type, else a usual name."""
    datasets = _import_datasets()
    features, option = splits[0][1].features, f"{kind}_column"
    if wanted is None:
        feature_type, usual = {"image": (datasets.Image, ("image", "img")),
                               "label": (datasets.ClassLabel, ("label", "labels"))}[kind]
        typed = [name for name, feature in features.items() if isinstance(feature, feature_type)]
        if len(typed) > 1:
            raise DataError(f"{where} has several {kind} columns ({', '.join(typed)}); set {option} to one of them")
        wanted = next(iter(typed or [name for name in usual if name in features]), None)
        if wanted is None:
            raise DataError(f"{where} has no {kind} column (columns: {', '.join(features)}); set {option} to the "
                            f"column holding the {kind}s")
    for name, dataset in splits:
        if wanted not in dataset.features:
            raise DataError(f"{where}{f' ({name})' if name else ''} has no column {wanted!r} (columns: "
                            f"{', '.join(dataset.features)}); set {option} to one of them")
    return wanted


def _locate(splits: Splits, row: int, column: str, where: Path) -> tuple[Any, int, str]:
    """The dataset and its row for a position in the splits taken in order, and how messages name that row."""
    for name, dataset in splits:
        if row < len(dataset):
            return dataset, row, f"row {row} of column {column!r} in {where}{f' ({name})' if name else ''}"
        row -= len(dataset)
    raise IndexError(row)


def _class_labels(splits: Splits, column: str, class_names: list[str] | None,
                  where: Path) -> tuple[list[str], np.ndarray]:
    """Class names and int64 labels ``[N]`` over the splits in order; a ClassLabel's names keep their order."""
    datasets = _import_datasets()
    feature = splits[0][1].features[column]
    if not isinstance(feature, (datasets.ClassLabel, datasets.Value)):
        raise DataError(f"column {column!r} of {where} holds {feature}, not one label per row; set label_column "
                        "to a column of class labels")
    values = []
    for name, dataset in splits:
        if dataset.features[column] != feature:
            raise DataError(f"column {column!r} is {dataset.features[column]} in {where} ({name}) but {feature} in "
                            f"{where} (train); give both splits the same labels")
        values += dataset[column][:]
    class_label = isinstance(feature, datasets.ClassLabel)
    missing = next((row for row, value in enumerate(values) if value is None or class_label and value < 0), None)
    if missing is not None:  # ClassLabel writes -1 for "no label"
        raise DataError(f"{_locate(splits, missing, column, where)[2]} has no label; label it or drop the row")
    if not values:
        raise DataError(f"{where} has no rows; point data.path at a dataset with images")
    if class_label and class_names is None:
        return [str(name) for name in feature.names], np.asarray(values, dtype=np.int64)
    named = [feature.names[value] for value in values] if class_label else values
    return class_labels(np.asarray(named), class_names, where)


def _undecoded(splits: Splits, column: str) -> Splits:
    """Only ``column``, its images as stored (bytes or a path): the image folder's decoder reads them."""
    datasets = _import_datasets()
    splits = [(name, dataset.select_columns([column])) for name, dataset in splits]
    return [(name, dataset.cast_column(column, datasets.Image(decode=False))
             if isinstance(dataset.features[column], datasets.Image) else dataset) for name, dataset in splits]


class _NamedBytes(io.BytesIO):
    """A row's encoded image; the image folder's messages format what they opened, so it reads as its row."""

    def __init__(self, data: bytes, row_name: str) -> None:
        super().__init__(data)
        self.row_name = row_name

    def __str__(self) -> str:
        return self.row_name

    def __repr__(self) -> str:
        return "<the row's bytes>"


class _ImageRows(Sequence):
    """The images of ``column`` over the splits, fetched a row at a time (never all in memory), each as what the
    image folder's decoder opens: the row's encoded bytes, or the file its path names (relative to ``folder``)."""

    def __init__(self, splits: Splits, column: str, folder: Path, where: Path, positions: range | None = None):
        self.splits, self.column, self.folder, self.where = splits, column, folder, where
        self.positions = positions if positions is not None else range(sum(len(d) for _, d in splits))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int | slice):
        if isinstance(index, slice):
            return _ImageRows(self.splits, self.column, self.folder, self.where, self.positions[index])
        dataset, row, name = _locate(self.splits, self.positions[index], self.column, self.where)
        value = dataset[row][self.column]
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, bytes):
            return _NamedBytes(value, name)
        if isinstance(value, str) and value:
            file = self.folder / value  # an absolute path replaces the folder
            if not file.is_file():
                raise DataError(f"{name} names the image file {file}, which does not exist; fix the path (a "
                                f"relative one starts at {self.folder}) or add the file")
            return file
        raise DataError(f"{name} holds no image ({type(value).__name__}); set image_column to the column of images")


def _cached_array(rows: _ImageRows, identity: list, size: tuple[int, int] | None, channels: int | None,
                  directory: Path) -> MemmapArray:
    """The cache file of ``rows`` decoded (named by ``identity`` and the options), written first when missing."""
    fingerprint = hashlib.sha256(json.dumps([CACHE_FORMAT, CACHE_TAG, identity, size, channels]).encode())
    target = directory / f"hf-images-{fingerprint.hexdigest()[:32]}.npy"
    return decoded_cache(target, rows, size, channels)
