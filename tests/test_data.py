"""Tests for distillery.data: sources, dataset validation, split, normalisation, augmentation, batching."""
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
    Augmentation,
    BatchIterator,
    Normalizer,
    horizontal_flip,
    load_dataset,
    load_idx_pair,
    load_npz,
    random_crop,
    random_shift,
    read_idx,
    train_val_split,
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
    assert set(DATASETS.names()) == {"digits", "fashion-mnist", "mnist", "kmnist", "idx", "npz"}
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


# ---------------------------------------------------------------- split and normalisation


def test_train_val_split_sizes_disjoint_and_seeded():
    dataset = tiny_dataset(count=50)
    dataset.inputs[:, 0, 0, 0] = torch.arange(50, dtype=torch.float32)  # tag rows to recover indices
    train, val = train_val_split(dataset, 0.2, seed=3)
    train_ids = set(train.inputs[:, 0, 0, 0].long().tolist())
    val_ids = set(val.inputs[:, 0, 0, 0].long().tolist())
    assert (len(train), len(val)) == (40, 10)
    assert not train_ids & val_ids and train_ids | val_ids == set(range(50))
    _, same_val = train_val_split(dataset, 0.2, seed=3)
    _, other_val = train_val_split(dataset, 0.2, seed=4)
    torch.testing.assert_close(val.inputs, same_val.inputs)
    assert not torch.equal(val.inputs, other_val.inputs)
    kept, none = train_val_split(dataset, 0.0, seed=0)
    assert kept is dataset and none is None
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="val_fraction"):
            train_val_split(dataset, bad, seed=0)


def test_normalizer_per_channel_and_tabular():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(40, 3, 5, 5, generator=generator) * torch.tensor([1.0, 4.0, 0.1]).view(1, 3, 1, 1)
    inputs = inputs + torch.tensor([0.0, 2.0, 5.0]).view(1, 3, 1, 1)
    dataset = ArrayDataset(inputs, torch.zeros(40, dtype=torch.long), ["a"])
    normalizer = Normalizer.fit(dataset)
    assert len(normalizer.mean) == 3
    normalized = normalizer.apply(dataset).inputs
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert Normalizer.from_dict(normalizer.to_dict()) == normalizer
    assert normalizer(dataset.inputs[:4].double()).dtype == torch.float64

    tabular = ArrayDataset(torch.rand(30, 6, generator=generator) * 3 + 1, torch.zeros(30, dtype=torch.long), ["a"])
    flat = Normalizer.fit(tabular)
    assert len(flat.mean) == 1
    normalized = flat.apply(tabular).inputs
    assert abs(float(normalized.mean())) < 1e-5 and abs(float(normalized.std(unbiased=False)) - 1) < 1e-4


def test_normalizer_constant_channel_and_channel_mismatch():
    dataset = ArrayDataset(torch.ones(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), ["a"])
    normalizer = Normalizer.fit(dataset)
    assert normalizer.std == (1.0,)
    with pytest.raises(DataError, match="fit on 3 channels"):
        Normalizer((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))(torch.zeros(2, 1, 4, 4))


# ---------------------------------------------------------------- augmentation


def naive_padded_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample reference: same draws as the vectorised version, one image at a time."""
    offsets = torch.randint(0, 2 * padding + 1, (len(images), 2), generator=generator)
    _, _, height, width = images.shape
    output = torch.zeros_like(images)
    for index, (row, col) in enumerate(offsets.tolist()):
        canvas = torch.zeros(images.shape[1], height + 2 * padding, width + 2 * padding)
        canvas[:, padding : padding + height, padding : padding + width] = images[index]
        output[index] = canvas[:, row : row + height, col : col + width]
    return output


@pytest.mark.parametrize("function", [random_shift, random_crop])
@pytest.mark.parametrize("padding", [1, 3])
def test_shift_and_crop_match_naive_reference(function, padding):
    images = torch.rand(6, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    actual = function(images, padding, torch.Generator().manual_seed(11))
    expected = naive_padded_crop(images, padding, torch.Generator().manual_seed(11))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert actual.shape == images.shape and actual.data_ptr() != images.data_ptr()
    # Draws vary per sample: a batch of identical images should not all move the same way.
    same = torch.rand(1, 1, 5, 7).expand(32, 1, 5, 7).contiguous()
    moved = function(same, padding, torch.Generator().manual_seed(1))
    assert len({tuple(image.flatten().tolist()) for image in moved}) > 1


def test_shift_translates_content():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0
    for seed in range(10):
        shifted = random_shift(image, 2, torch.Generator().manual_seed(seed))
        assert float(shifted.sum()) == 1.0  # a shift of <= 2 keeps the centre pixel in view
        assert shifted.flatten().nonzero().numel() == 1


def test_flip():
    images = torch.rand(5, 3, 4, 6)
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(horizontal_flip(images, 1.0, generator), torch.flip(images, dims=[-1]))
    torch.testing.assert_close(horizontal_flip(images, 0.0, generator), images)
    mixed = horizontal_flip(torch.rand(64, 1, 2, 3), 0.5, generator)
    assert mixed.shape == (64, 1, 2, 3)
    with pytest.raises(ConfigError, match="probability"):
        horizontal_flip(images, 1.5, generator)


def test_augmentation_composition_and_errors():
    images = torch.rand(4, 1, 6, 6)
    off = Augmentation()
    assert not off.enabled and off(images, torch.Generator()) is images
    assert off(torch.rand(4, 10), torch.Generator()).shape == (4, 10)  # harmless on tabular when off
    on = Augmentation(shift=1, crop_padding=2, flip=True)
    assert on.enabled
    first = on(images, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, on(images, torch.Generator().manual_seed(5)))
    with pytest.raises(ConfigError, match=r"augmentation needs image inputs \[N, C, H, W\]"):
        on(torch.rand(4, 10), torch.Generator())
    with pytest.raises(ConfigError, match="shift"):
        Augmentation(shift=-1)


# ---------------------------------------------------------------- batching


def tagged_dataset(count: int) -> ArrayDataset:
    inputs = torch.arange(count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 1, 3, 3).contiguous()
    return ArrayDataset(inputs, torch.arange(count) % 4, ["a", "b", "c", "d"], "tagged")


def collect(iterator: BatchIterator):
    return [tuple(part.clone() for part in batch) for batch in iterator]


def test_batches_cover_every_index_once_and_match_samples():
    dataset = tagged_dataset(23)
    iterator = BatchIterator(dataset, batch_size=5, shuffle=True, seed=7)
    batches = collect(iterator)
    assert len(batches) == len(iterator) == 5 and [len(b[2]) for b in batches] == [5, 5, 5, 5, 3]
    indices = torch.cat([b[2] for b in batches])
    assert indices.dtype == torch.int64 and sorted(indices.tolist()) == list(range(23))
    assert indices.tolist() != list(range(23))  # shuffled
    for inputs, labels, batch_indices in batches:
        torch.testing.assert_close(inputs, dataset.inputs[batch_indices])
        torch.testing.assert_close(labels, dataset.labels[batch_indices])
    in_order = torch.cat([b[2] for b in collect(BatchIterator(dataset, batch_size=5))])
    assert in_order.tolist() == list(range(23))


def test_batches_deterministic_per_seed_and_epoch():
    dataset = tagged_dataset(40)
    augmentation = Augmentation(shift=1, flip=True)
    iterator = BatchIterator(dataset, batch_size=8, shuffle=True, seed=3, augmentation=augmentation)
    iterator.set_epoch(2)
    first, again = collect(iterator), collect(iterator)
    for left, right in zip(first, again):
        for a, b in zip(left, right):
            torch.testing.assert_close(a, b)
    iterator.set_epoch(3)
    next_epoch = collect(iterator)
    assert not torch.equal(torch.cat([b[2] for b in first]), torch.cat([b[2] for b in next_epoch]))
    other_seed = BatchIterator(dataset, batch_size=8, shuffle=True, seed=4, augmentation=augmentation)
    other_seed.set_epoch(2)
    assert not torch.equal(torch.cat([b[2] for b in first]), torch.cat([b[2] for b in collect(other_seed)]))


def test_batches_drop_last_transform_and_bad_size():
    dataset = tagged_dataset(23)
    iterator = BatchIterator(dataset, batch_size=5, drop_last=True, transform=lambda x: x * 2 + 1)
    batches = collect(iterator)
    assert len(iterator) == len(batches) == 4 and all(len(b[2]) == 5 for b in batches)
    inputs, _, indices = batches[1]
    torch.testing.assert_close(inputs, dataset.inputs[indices] * 2 + 1)
    # Transform runs after augmentation: a shift's zero fill becomes exactly 1 after x * 2 + 1.
    shifted = BatchIterator(tagged_dataset(8), 8, augmentation=Augmentation(shift=2), transform=lambda x: x * 2 + 1)
    assert float(next(iter(shifted))[0].min()) == 1.0
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="batch_size"):
            BatchIterator(dataset, batch_size=bad)
