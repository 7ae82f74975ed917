"""Data sources (IDX, npz, digits, Fashion-MNIST, the registry) and ArrayDataset validation."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from distillery.data import (
    DATASETS,
    ArrayDataset,
    load_dataset,
    load_idx_pair,
    load_npz,
    read_idx,
)
from distillery.errors import ConfigError, DataError

IDX_TYPE_CODES = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` in IDX format by hand, so the reader is tested against the spec, not itself."""
    code = IDX_TYPE_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_idx_directory(directory: Path, train_count=12, test_count=5, gz=True, num_classes=3) -> Path:
    rng = np.random.RandomState(1)
    suffix = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_count), ("t10k", test_count)):
        images = rng.randint(0, 256, size=(count, 4, 5)).astype(np.uint8)
        labels = (np.arange(count) % num_classes).astype(np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return directory



def tiny_dataset(count=10, shape=(2, 3, 3), num_classes=3, seed=0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand((count, *shape), generator=generator)
    labels = torch.arange(count) % num_classes
    return ArrayDataset(inputs, labels, [f"c{i}" for i in range(num_classes)], "tiny")



# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["data-idx3-ubyte.gz", "data-idx3-ubyte"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) * 7 - 20).reshape(2, 3, 4)
    array = np.clip(array, 0, 255).astype(dtype) if dtype == np.uint8 else array.astype(dtype)
    loaded = read_idx(write_idx(tmp_path / name, array))
    assert loaded.dtype == dtype and loaded.shape == (2, 3, 4)
    np.testing.assert_array_equal(loaded, array)


def test_idx_truncated_names_file(tmp_path):
    path = write_idx(tmp_path / "images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_idx_bad_magic_and_missing_file(tmp_path):
    path = tmp_path / "junk-idx1-ubyte"
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="junk-idx1-ubyte.*not an IDX file"):
        read_idx(path)
    with pytest.raises(DataError, match="absent.gz.*does not exist"):
        read_idx(tmp_path / "absent.gz")
    broken_gzip = tmp_path / "broken.gz"
    broken_gzip.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="broken.gz"):
        read_idx(broken_gzip)


def test_idx_pair_scales_and_adds_channel(tmp_path):
    images = np.array([[[0, 255], [51, 102]]] * 3, dtype=np.uint8)
    images_path = write_idx(tmp_path / "img-idx3-ubyte.gz", images)
    labels_path = write_idx(tmp_path / "lab-idx1-ubyte.gz", np.array([0, 1, 1], np.uint8))
    dataset = load_idx_pair(images_path, labels_path, ["a", "b"])
    assert dataset.inputs.shape == (3, 1, 2, 2) and dataset.inputs.dtype == torch.float32
    assert dataset.labels.dtype == torch.int64
    torch.testing.assert_close(dataset.inputs[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    assert dataset.class_names == ["a", "b"] and dataset.num_classes == 2


def test_idx_pair_count_mismatch_names_both_files(tmp_path):
    images_path = write_idx(tmp_path / "img-idx3-ubyte", np.zeros((4, 2, 2), np.uint8))
    labels_path = write_idx(tmp_path / "lab-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError) as caught:
        load_idx_pair(images_path, labels_path, ["a"])
    assert str(images_path) in str(caught.value) and str(labels_path) in str(caught.value)
    assert "4 images" in str(caught.value) and "3 labels" in str(caught.value)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loaders(tmp_path, gz):
    directory = write_idx_directory(tmp_path / "idx", gz=gz)
    train, test = load_dataset("idx", str(directory))
    assert (len(train), len(test)) == (12, 5)
    assert train.input_shape == (1, 4, 5) and train.class_names == ["0", "1", "2"]
    assert test.class_names == train.class_names
    train, _ = load_dataset("kmnist", directory)
    assert train.class_names == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    train, _ = load_dataset("mnist", directory)
    assert train.class_names == [str(i) for i in range(10)]
    train, _ = load_dataset("idx", directory, class_names=["x", "y", "z", "w"])
    assert train.num_classes == 4


def test_idx_directory_missing_file_and_path(tmp_path):
    directory = write_idx_directory(tmp_path / "idx")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("idx", directory)
    with pytest.raises(ConfigError, match="needs data.path"):
        load_dataset("mnist")


def test_fashion_mnist_missing_directory_says_the_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert "nowhere" in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.path" in message


def test_real_fashion_mnist_loads(fashion_mnist_dir):
    train, test = load_dataset("fashion-mnist")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.inputs.shape == (60000, 1, 28, 28) and test.inputs.shape == (10000, 1, 28, 28)
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert 0.0 <= float(train.inputs.min()) and float(train.inputs.max()) <= 1.0
    # Fashion-MNIST is balanced: 6000 training images per class.
    assert torch.bincount(train.labels).tolist() == [6000] * 10


# ---------------------------------------------------------------- npz and the registry


def test_npz_split_file_and_directory(tmp_path):
    rng = np.random.RandomState(0)
    x_train = rng.randint(0, 256, size=(6, 3, 3)).astype(np.uint8)
    x_test = rng.rand(2, 4).astype(np.float64)  # tabular test split is silly but exercises the 2-D path
    np.savez(tmp_path / "all.npz", x_train=x_train, y_train=[0, 1, 2, 0, 1, 4], x_test=x_test, y_test=[1, 0])
    train, test = load_dataset("npz", tmp_path / "all.npz")
    assert train.inputs.shape == (6, 1, 3, 3) and float(train.inputs.max()) <= 1.0
    torch.testing.assert_close(train.inputs[:, 0], torch.from_numpy(x_train / 255.0).float())
    assert test.inputs.shape == (2, 4) and test.inputs.dtype == torch.float32
    assert train.class_names == test.class_names == ["0", "1", "2", "3", "4"]

    directory = tmp_path / "dir"
    directory.mkdir()
    np.savez(directory / "train.npz", x=x_train, y=np.array([0, 1, 0, 1, 0, 1]))
    np.savez(directory / "test.npz", x=x_train[:2], y=np.array([1, 0]))
    train, test = load_dataset("npz", str(directory), class_names=["cat", "dog"])
    assert (len(train), len(test)) == (6, 2) and train.class_names == ["cat", "dog"]


def test_npz_missing_key_lists_available_keys(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 3)), targets=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"a\.npz has no array 'x'.*images, targets"):
        load_npz(tmp_path / "a.npz")
    assert len(load_npz(tmp_path / "a.npz", inputs_key="images", labels_key="targets")) == 2


def test_npz_refuses_pickles_and_junk(tmp_path):
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="objects.npz"):
        load_npz(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_bytes(b"hello")
    with pytest.raises(DataError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")


def test_digits_split_is_fixed():
    train, test = load_dataset("digits")
    assert (len(train), len(test)) == (1437, 360)
    assert train.inputs.shape == (1437, 1, 8, 8) and test.inputs.shape == (360, 1, 8, 8)
    assert float(train.inputs.min()) == 0.0 and float(train.inputs.max()) == 1.0
    assert train.class_names == [str(i) for i in range(10)]
    from sklearn.datasets import load_digits

    expected_test_rows = np.random.RandomState(0).permutation(1797)[-360:]
    expected = torch.from_numpy(load_digits().images[expected_test_rows] / 16.0).float()
    torch.testing.assert_close(test.inputs[:, 0], expected)


def test_load_dataset_rejects_unknown_name_and_option():
    assert set(DATASETS.names()) == {"digits", "fashion-mnist", "mnist", "kmnist", "idx", "npy", "npz", "imagefolder", "huggingface",
                                     "csv", "parquet", "python"}
    with pytest.raises(ConfigError, match="'cifar'.*digits"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="'limit'"):
        load_dataset("digits", limit=10)
    with pytest.raises(ConfigError, match="'colour'.*class_names"):
        load_dataset("npz", "x.npz", colour=True)


# ---------------------------------------------------------------- ArrayDataset validation


def test_dataset_labels_out_of_range_names_source():
    with pytest.raises(DataError, match=r"labels in /x/y\.npz go up to 12 but only 10 class names"):
        ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 12, 1]), [str(i) for i in range(10)], "/x/y.npz")
    with pytest.raises(DataError, match="go down to -1"):
        ArrayDataset(torch.zeros(2, 2), torch.tensor([0, -1]), ["a", "b"], "s")


def test_dataset_rejects_nan_empty_mismatch_and_float_labels():
    inputs = torch.zeros(3, 1, 2, 2)
    inputs[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="src.*NaN or Inf in 1 samples"):
        ArrayDataset(inputs, torch.tensor([0, 0, 0]), ["a"], "src")
    with pytest.raises(DataError, match="src has no samples"):
        ArrayDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), ["a"], "src")
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        ArrayDataset(torch.zeros(3, 4), torch.tensor([0, 0]), ["a"], "src")
    with pytest.raises(DataError, match="integer class indices"):
        ArrayDataset(torch.zeros(2, 4), torch.tensor([0.0, 1.0]), ["a", "b"], "src")


def test_dataset_subset_and_properties():
    dataset = tiny_dataset(count=10)
    assert len(dataset) == 10 and dataset.input_shape == (2, 3, 3) and dataset.num_classes == 3
    part = dataset.subset(torch.tensor([7, 2]))
    torch.testing.assert_close(part.inputs, dataset.inputs[[7, 2]])
    assert part.labels.tolist() == [1, 2] and part.source == "tiny"
