"""Dataset readers (IDX, .npz, memory-mapped .npy, scikit-learn's digits) and the `DATASETS` registry behind `load_dataset`."""
from __future__ import annotations

import gzip
import inspect
import math
import struct
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from distillery.data.dataset import ArrayDataset
from distillery.data.memmap import MemmapInputs, load_memmap_split
from distillery.errors import ConfigError, DataError
from distillery.registry import Registry

Loader = Callable[..., "tuple[ArrayDataset, ArrayDataset]"]
DATASETS: Registry[Loader] = Registry("dataset")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
DIGIT_CLASSES = [str(digit) for digit in range(10)]
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type byte -> big-endian numpy dtype (the format's spec, as used by MNIST and its family).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (MNIST family), gzip-compressed when it ends in `.gz`.

    Example: `images = read_idx("train-images-idx3-ubyte.gz")  # uint8 [60000, 28, 28]`
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'}); "
            "expected 00 00 <type> <ndim> as in the MNIST files"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path} is truncated inside its header; download the file again")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {problem}: shape {shape} needs {expected} bytes but the file has {len(raw)}; "
            "download the file again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the data path")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}; download the file again") from None


def load_idx_pair(
    images_path: str | Path, labels_path: str | Path, class_names: Sequence[str] | None = None
) -> ArrayDataset:
    """Images and labels from two IDX files; uint8 images become float32 in [0, 1], shape [N, 1, H, W].

    Example: `ds = load_idx_pair("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", list("0123456789"))`
    """
    images, labels = _idx_arrays(Path(images_path), Path(labels_path))
    names = _class_names(class_names, labels)
    return _to_dataset(images, labels, names, str(images_path))


def _idx_arrays(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path} holds an array of shape {images.shape}; expected images [N, H, W]")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds an array of shape {labels.shape}; expected labels [N]")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "use the image and label files of the same split"
        )
    return images, labels


def load_npz(
    path: str | Path,
    inputs_key: str = "x",
    labels_key: str = "y",
    class_names: Sequence[str] | None = None,
) -> ArrayDataset:
    """One split from an .npz file; uint8 images are scaled to [0, 1] and [N, H, W] becomes [N, 1, H, W].

    Example: `ds = load_npz("train.npz", class_names=["cat", "dog"])`
    """
    arrays = _read_npz(Path(path), [inputs_key, labels_key])
    inputs, labels = arrays[inputs_key], arrays[labels_key]
    names = _class_names(class_names, labels)
    return _to_dataset(inputs, labels, names, str(path))


def _read_npz(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the data path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path} has no array {missing[0]!r}; it holds {', '.join(archive.files) or 'nothing'}. "
                    "Name the right keys or re-save the file"
                )
            return {key: archive[key] for key in keys}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        # ValueError is how numpy refuses pickled object arrays and non-npz files.
        raise DataError(f"cannot read {path} as .npz: {error}; save it with numpy.savez of plain arrays") from None


def _class_names(class_names: Sequence[str] | None, *label_arrays: np.ndarray) -> list[str]:
    """The given names, or "0".."K-1" where K-1 is the largest label in any split."""
    if class_names is not None:
        if isinstance(class_names, str):
            raise ConfigError(f"class_names must be a list of names, not the string {class_names!r}")
        return [str(name) for name in class_names]
    top = max((int(labels.max()) for labels in label_arrays if labels.size), default=0)
    return [str(index) for index in range(top + 1)]


def _to_dataset(inputs: np.ndarray, labels: np.ndarray, class_names: list[str], source: str) -> ArrayDataset:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels in {source} are {labels.dtype}; expected integer class indices")
    if inputs.dtype == np.uint8:
        inputs = inputs.astype(np.float32) / 255.0
    elif not np.issubdtype(inputs.dtype, np.number) or np.issubdtype(inputs.dtype, np.complexfloating):
        raise DataError(f"inputs in {source} are {inputs.dtype}; expected numbers")
    if inputs.ndim == 3:
        inputs = inputs[:, None]  # grey images [N, H, W] -> one channel
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
        torch.from_numpy(labels.astype(np.int64)),
        class_names,
        source,
    )


def load_dataset(name: str, path: str | Path | None = None, **options) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) pair of a registered dataset. Example: `train, test = load_dataset("digits")`.

    ``class_names`` names the classes of any dataset (in label order); a reader that does not take it has its
    classes renamed after reading, and the count must match. Unknown options raise `ConfigError` naming the
    option and the ones the dataset takes.
    """
    loader = DATASETS.get(name)
    accepted = [param for param in inspect.signature(loader).parameters if param != "path"]
    renamed = options.pop("class_names", None) if "class_names" not in accepted else None
    for option in options:
        if option not in accepted:
            raise ConfigError(
                f"dataset {name!r} has no option {option!r}; "
                f"it takes {', '.join(['class_names', *accepted]) if accepted else 'only class_names'}"
            )
    train, test = loader(path, **options)
    if renamed is not None:
        train, test = (_renamed(split, _class_names(renamed), name) for split in (train, test))
    return train, test


def _renamed(dataset: ArrayDataset, names: list[str], name: str) -> ArrayDataset:
    if len(names) != len(dataset.class_names):
        raise DataError(f"class_names gives {len(names)} names but dataset {name!r} has {len(dataset.class_names)} "
                        f"classes ({', '.join(dataset.class_names[:5])}{', ...' if len(dataset.class_names) > 5 else ''})")
    return ArrayDataset(dataset.inputs, dataset.labels, names, dataset.source)


@DATASETS.register("digits")
def _load_digits(path: str | Path | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    if path is not None:
        raise ConfigError("dataset 'digits' is bundled with scikit-learn and takes no data.path; remove it")
    from sklearn.datasets import load_digits  # deferred: importing scikit-learn costs a second

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    # scikit-learn ships no split; a fixed permutation makes the test set the same on every machine.
    order = np.random.RandomState(0).permutation(len(labels))
    test_size = math.ceil(0.2 * len(labels))
    train_rows, test_rows = order[:-test_size], order[-test_size:]
    return (
        _to_dataset(images[train_rows], labels[train_rows], DIGIT_CLASSES, "digits (train)"),
        _to_dataset(images[test_rows], labels[test_rows], DIGIT_CLASSES, "digits (test)"),
    )


@DATASETS.register("fashion-mnist")
def _load_fashion_mnist(path: str | Path | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    directory = Path(path) if path is not None else Path(FASHION_MNIST_DIR)
    if not directory.is_dir():
        raise DataError(
            f"Fashion-MNIST directory {directory} does not exist; install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass data.path"
        )
    return _load_idx_directory(directory, FASHION_MNIST_CLASSES)


@DATASETS.register("mnist")
def _load_mnist(path: str | Path | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    return _load_idx_directory(_required_directory("mnist", path), DIGIT_CLASSES)


@DATASETS.register("kmnist")
def _load_kmnist(path: str | Path | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    return _load_idx_directory(_required_directory("kmnist", path), KMNIST_CLASSES)


@DATASETS.register("idx")
def _load_idx(
    path: str | Path | None = None, class_names: Sequence[str] | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    return _load_idx_directory(_required_directory("idx", path), class_names)


def _required_directory(name: str, path: str | Path | None) -> Path:
    if path is None:
        raise ConfigError(
            f"dataset {name!r} needs data.path: a directory holding {', '.join(IDX_FILES.values())} (each may end in .gz)"
        )
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"data.path {directory} for dataset {name!r} is not a directory; point it at the IDX files")
    return directory


def _load_idx_directory(
    directory: Path, class_names: Sequence[str] | None
) -> tuple[ArrayDataset, ArrayDataset]:
    files = {role: _find_idx_file(directory, stem) for role, stem in IDX_FILES.items()}
    train_images, train_labels = _idx_arrays(files["train_images"], files["train_labels"])
    test_images, test_labels = _idx_arrays(files["test_images"], files["test_labels"])
    # Both splits share one label space, even when the test split lacks the top class.
    names = _class_names(class_names, train_labels, test_labels)
    return (
        _to_dataset(train_images, train_labels, names, str(files["train_images"])),
        _to_dataset(test_images, test_labels, names, str(files["test_images"])),
    )


def _find_idx_file(directory: Path, stem: str) -> Path:
    # Mirrors differ: gzip or raw, and some write "train-images.idx3-ubyte".
    dotted = stem.replace("-idx", ".idx")
    for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory} has no {stem} or {stem}.gz; put the four MNIST-layout IDX files there")


LAYOUTS = ("channels_first", "channels_last")
CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA: what the last axis of a channels-last image holds


def channels_first(inputs: np.ndarray, layout: str | None, source: str) -> np.ndarray:
    """Image arrays as ``[N, C, H, W]``: ``layout="channels_last"`` moves ``[N, H, W, C]``'s channels forward.

    Without a layout, an array that looks channels-last (a last axis of 1, 3 or 4 after a second axis that is
    not) is refused, naming the setting, rather than read as an image of H channels. Raises DataError.
    """
    if layout not in (None, *LAYOUTS):
        raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if inputs.ndim != 4:
        if layout == "channels_last":
            raise DataError(f"inputs in {source} have shape {inputs.shape}; only images [N, H, W, C] are channels "
                            "last: remove data.layout")
        return inputs
    if layout == "channels_last":
        return np.moveaxis(inputs, -1, 1)
    if layout is None and inputs.shape[-1] in CHANNEL_COUNTS and inputs.shape[1] not in CHANNEL_COUNTS:
        raise DataError(f"inputs in {source} have shape {tuple(inputs.shape)}, which looks like [N, H, W, C] "
                        f"(channels last); set data.layout: channels_last, or data.layout: channels_first if "
                        f"{inputs.shape[1]} is the channel count")
    return inputs


@DATASETS.register("npz")
def _load_npz_dataset(
    path: str | Path | None = None, class_names: Sequence[str] | None = None, layout: str | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    if path is None:
        raise ConfigError(
            "dataset 'npz' needs data.path: a directory with train.npz and test.npz (keys x, y), "
            "or one .npz file with keys x_train, y_train, x_test, y_test"
        )
    location = Path(path)
    if location.is_dir():
        train = _read_npz(location / "train.npz", ["x", "y"])
        test = _read_npz(location / "test.npz", ["x", "y"])
        sources = str(location / "train.npz"), str(location / "test.npz")
        train_x, train_y, test_x, test_y = train["x"], train["y"], test["x"], test["y"]
    else:
        arrays = _read_npz(location, ["x_train", "y_train", "x_test", "y_test"])
        sources = f"{location} (train)", f"{location} (test)"
        train_x, train_y, test_x, test_y = (arrays[key] for key in ("x_train", "y_train", "x_test", "y_test"))
    names = _class_names(class_names, train_y, test_y)
    return (
        _to_dataset(channels_first(train_x, layout, sources[0]), train_y, names, sources[0]),
        _to_dataset(channels_first(test_x, layout, sources[1]), test_y, names, sources[1]),
    )


NPY_FILES = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")


@DATASETS.register("npy")
def _load_npy_dataset(
    path: str | Path | None = None, class_names: Sequence[str] | None = None, layout: str | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    """A directory of x_train.npy, y_train.npy, x_test.npy, y_test.npy; the inputs are memory-mapped and read
    per batch, so the training set may be larger than memory (see distillery/data/memmap.py)."""
    if path is None:
        raise ConfigError(f"dataset 'npy' needs data.path: a directory with {', '.join(NPY_FILES)}")
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"data.path {directory} for dataset 'npy' is not a directory; it must hold {', '.join(NPY_FILES)}")
    train_x, train_y = load_memmap_split(directory / "x_train.npy", directory / "y_train.npy")
    test_x, test_y = load_memmap_split(directory / "x_test.npy", directory / "y_test.npy")
    if layout == "channels_last":
        raise DataError(f"{directory} is read from disk batch by batch, so its images must be [N, C, H, W]; save "
                        "them so (numpy.moveaxis(x, -1, 1)) and remove data.layout")
    channels_first(np.empty((1, *train_x.sample_shape), np.uint8), layout, str(directory / "x_train.npy"))
    names = _class_names(class_names, train_y, test_y)
    return (_memmap_dataset(train_x, train_y, names, str(directory / "x_train.npy")),
            _memmap_dataset(test_x, test_y, names, str(directory / "x_test.npy")))


def _memmap_dataset(inputs: MemmapInputs, labels: np.ndarray, names: list[str], source: str) -> ArrayDataset:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels for {source} are {labels.dtype}; expected integer class indices")
    return ArrayDataset(inputs, torch.from_numpy(labels.astype(np.int64)), names, source)
