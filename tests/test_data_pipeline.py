"""The data pipeline: split, normalisation, batched augmentation, batch iteration."""
from __future__ import annotations

import pytest
import torch

from distillery.data import (
    ArrayDataset,
    Augmentation,
    BatchIterator,
    Normalizer,
    horizontal_flip,
    random_crop,
    random_shift,
    train_val_split,
)
from distillery.errors import ConfigError, DataError


def tiny_dataset(count=10, shape=(2, 3, 3), num_classes=3, seed=0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand((count, *shape), generator=generator)
    labels = torch.arange(count) % num_classes
    return ArrayDataset(inputs, labels, [f"c{i}" for i in range(num_classes)], "tiny")



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

    scales = torch.tensor([1.0, 10.0, 100.0, 0.1, 3.0, 1000.0])
    tabular = ArrayDataset(torch.rand(30, 6, generator=generator) * scales + 1, torch.zeros(30, dtype=torch.long), ["a"])
    per_feature = Normalizer.fit(tabular)
    assert len(per_feature.mean) == 6  # a table's features are on their own scales: one statistic each
    normalized = per_feature.apply(tabular).inputs
    torch.testing.assert_close(normalized.mean(dim=0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(dim=0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)


def test_normalizer_constant_channel_and_channel_mismatch():
    dataset = ArrayDataset(torch.ones(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), ["a"])
    normalizer = Normalizer.fit(dataset)
    assert normalizer.std == (1.0,)
    with pytest.raises(DataError, match="have 1 channels .* preprocessing .* has 3"):
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
    assert float(next(iter(shifted)).inputs.min()) == 1.0
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="batch_size"):
            BatchIterator(dataset, batch_size=bad)
