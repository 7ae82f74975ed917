"""Hugging Face `datasets` image data: save_to_disk folders, parquet and jsonl files, decoded once and cached."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from distillery.data import image_folder
from distillery.data.hf_images import load_hf_images
from distillery.data.image_folder import load_image_folder
from distillery.data.memmap import MemmapInputs
from distillery.data.sources import DATASETS, load_dataset
from distillery.data.transforms import stratified_split
from distillery.errors import ConfigError, DataError

CLASSES = ["cat", "dog", "eel"]
FEATURES = Features({"img": Image(), "label": ClassLabel(names=CLASSES)})


def grey(value: int, shape=(3, 4)) -> PILImage.Image:
    """A grey image (height x width ``shape``) of one value."""
    return PILImage.fromarray(np.full(shape, value, dtype=np.uint8))


def pets(labels: list[int], offset: int = 0, features: Features = FEATURES) -> Dataset:
    """Row i: label ``labels[i]``, a 3x4 grey image of the value 50 * label + offset + i."""
    images = [grey(50 * label + offset + row) for row, label in enumerate(labels)]
    return Dataset.from_dict({"img": images, "label": labels}, features=features)


def values_of(dataset) -> np.ndarray:
    """One pixel value (0..255) per sample, from float inputs in [0, 1]."""
    return (dataset.inputs[torch.arange(len(dataset))].flatten(1)[:, 0] * 255).round().numpy().astype(int)


FIVE_EACH = [label for label in range(3) for _ in range(5)]


@pytest.mark.parametrize("test_split", ["test", "validation"])
def test_a_saved_dataset_dict_keeps_its_splits_labels_and_class_names(tmp_path, test_split):
    unsorted = Features({"img": Image(), "label": ClassLabel(names=["eel", "cat", "dog", "ant"])})
    DatasetDict({"train": pets([0, 1, 2, 1], features=unsorted),
                 test_split: pets([2, 0], offset=10, features=unsorted)}).save_to_disk(tmp_path / "dd")
    train, test = load_hf_images(tmp_path / "dd", cache_dir=tmp_path / "cache")
    assert train.class_names == test.class_names == ["eel", "cat", "dog", "ant"]  # as the ClassLabel has them
    assert isinstance(train.inputs, MemmapInputs) and train.input_shape == (1, 3, 4)
    assert train.labels.tolist() == [0, 1, 2, 1] and test.labels.tolist() == [2, 0]
    assert values_of(train).tolist() == [0, 51, 102, 53] and values_of(test).tolist() == [110, 11]
    assert test.source == f"{tmp_path / 'dd'} ({test_split})"
    assert len(list((tmp_path / "cache").glob("hf-images-*.npy"))) == 1


def test_a_single_saved_dataset_is_split_stratified_and_seeded(tmp_path):
    pets(FIVE_EACH).save_to_disk(tmp_path / "single")
    train, test = load_hf_images(tmp_path / "single", test_fraction=0.2, seed=3, cache_dir=tmp_path / "cache")
    train_rows, test_rows = stratified_split(np.array(FIVE_EACH), 0.2, 3)
    assert values_of(train).tolist() == [50 * FIVE_EACH[row] + row for row in train_rows]
    assert values_of(test).tolist() == [50 * FIVE_EACH[row] + row for row in test_rows]
    assert sorted(test.labels.tolist()) == [0, 1, 2] and (len(train), len(test)) == (12, 3)
    assert train.source.endswith("(train)") and test.source.endswith("(test)")


def test_decoding_follows_the_image_folder_rules(tmp_path):
    """The same RGB pictures as an image folder and as a parquet file give the same pixels, resized and grey."""
    generator = np.random.default_rng(0)
    pictures = [generator.integers(0, 256, (6, 9, 3), dtype=np.uint8) for _ in FIVE_EACH]
    for row, (label, pixels) in enumerate(zip(FIVE_EACH, pictures)):
        (tmp_path / "folder" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(pixels).save(tmp_path / "folder" / CLASSES[label] / f"{row:02d}.png")
    Dataset.from_dict({"img": [PILImage.fromarray(p) for p in pictures], "label": FIVE_EACH},
                      features=FEATURES).to_parquet(tmp_path / "pets.parquet")
    for options in ({"image_size": 4, "channels": 1}, {"image_size": (2, 5)}):
        expected = load_image_folder(tmp_path / "folder", cache_dir=tmp_path / "cache", **options)
        loaded = load_hf_images(tmp_path / "pets.parquet", cache_dir=tmp_path / "cache", **options)
        for ours, theirs in zip(loaded, expected):
            assert ours.class_names == CLASSES and torch.equal(ours.labels, theirs.labels)
            assert torch.equal(ours.inputs[torch.arange(len(ours))], theirs.inputs[torch.arange(len(theirs))])
    assert loaded[0].input_shape == (3, 2, 5)


def test_a_folder_of_parquet_files_named_by_split(tmp_path):
    (tmp_path / "data").mkdir()
    pets([0, 1, 2]).to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    pets([1, 2], offset=20).to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    train, test = load_hf_images(tmp_path, cache_dir=tmp_path / "cache")
    assert values_of(train).tolist() == [0, 51, 102] and values_of(test).tolist() == [70, 121]
    assert test.labels.tolist() == [1, 2] and test.class_names == CLASSES


def test_jsonl_with_image_paths_and_numeric_labels(tmp_path):
    (tmp_path / "pictures").mkdir()
    rows = []
    for row, label in enumerate([10, 2, 2, 10, 2, 10]):
        grey(row).save(tmp_path / "pictures" / f"{row}.png")
        rows.append({"image": f"pictures/{row}.png" if row % 2 else {"path": f"pictures/{row}.png", "bytes": None},
                     "labels": label})
    rows[0]["image"] = {"path": str(tmp_path / "pictures" / "0.png"), "bytes": None}  # absolute paths work too
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    train, test = load_hf_images(tmp_path / "rows.jsonl", test_fraction=0.5, cache_dir=tmp_path / "cache")
    assert train.class_names == ["2", "10"]  # sorted numerically, not as text
    assert named_labels(train, test) == {0: "10", 1: "2", 2: "2", 3: "10", 4: "2", 5: "10"}
    renamed = load_hf_images(tmp_path / "rows.jsonl", test_fraction=0.5, class_names=["10", "2", "5"],
                             cache_dir=tmp_path / "cache")
    assert renamed[0].class_names == ["10", "2", "5"] and named_labels(*renamed) == named_labels(train, test)
    assert renamed[0].labels.max() <= 1 and renamed[0].labels.tolist() != train.labels.tolist()


def named_labels(*splits) -> dict[int, str]:
    """Pixel value -> class name over every sample of the splits."""
    return {int(value): split.class_names[int(label)]
            for split in splits for value, label in zip(values_of(split), split.labels)}


def test_a_second_load_decodes_nothing_and_a_rewritten_file_decodes_again(tmp_path, monkeypatch):
    data, cache = tmp_path / "pets.parquet", tmp_path / "cache"
    pets(FIVE_EACH).to_parquet(data)
    first, _ = load_hf_images(data, cache_dir=cache)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    for name in ("_decode_all", "_is_grey"):
        monkeypatch.setattr(image_folder, name, no_decoding)
    monkeypatch.setattr(PILImage, "open", no_decoding)
    again, _ = load_hf_images(data, cache_dir=cache)
    assert values_of(again).tolist() == values_of(first).tolist()
    with pytest.raises(AssertionError, match="decoded"):
        load_hf_images(data, channels=3, cache_dir=cache)  # other options: another cache file
    monkeypatch.undo()
    pets(FIVE_EACH, offset=1).to_parquet(data)
    os.utime(data, ns=(1_000_000_000, 1_000_000_000))  # a distinct mtime even on coarse file systems
    changed, _ = load_hf_images(data, cache_dir=cache)
    assert values_of(changed).tolist() == [value + 1 for value in values_of(first).tolist()]


def test_it_is_registered_reads_offline_and_takes_its_options_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    both = Dataset.from_dict({"photo": [grey(7)] * 4, "kind": ["b", "a", "b", "a"], "label": [0] * 4},
                             features=Features({"photo": Image(), "kind": Value("string"), "label": Value("int64")}))
    both.save_to_disk(tmp_path / "saved")
    assert DATASETS.get("huggingface") is load_hf_images
    train, test = load_dataset("huggingface", str(tmp_path / "saved"), label_column="kind", test_fraction=0.5,
                               cache_dir=str(tmp_path / "cache"))
    assert train.class_names == ["a", "b"] and sorted(train.labels.tolist() + test.labels.tolist()) == [0, 0, 1, 1]
    assert os.environ["HF_DATASETS_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_columns_name_the_columns_and_the_option(tmp_path):
    plain = Dataset.from_dict({"pixels": [1, 2], "label": [0, 1]})
    plain.save_to_disk(tmp_path / "plain")
    with pytest.raises(DataError, match=r"no image column \(columns: pixels, label\); set image_column"):
        load_hf_images(tmp_path / "plain", cache_dir=tmp_path / "cache")
    pets([0, 1]).save_to_disk(tmp_path / "pets")
    with pytest.raises(DataError, match=r"no column 'photo' \(columns: img, label\); set image_column"):
        load_hf_images(tmp_path / "pets", image_column="photo", cache_dir=tmp_path / "cache")
    two = Dataset.from_dict({"a": [grey(1)] * 2, "b": [grey(2)] * 2, "label": [0, 1]},
                            features=Features({"a": Image(), "b": Image(), "label": Value("int64")}))
    two.save_to_disk(tmp_path / "two")
    with pytest.raises(DataError, match=r"several image columns \(a, b\); set image_column"):
        load_hf_images(tmp_path / "two", cache_dir=tmp_path / "cache")
    assert load_hf_images(tmp_path / "two", image_column="b", test_fraction=0.5, cache_dir=tmp_path / "cache")
    unlabeled = Dataset.from_dict({"img": [grey(1), grey(2)], "kind": ["a", "b"]})
    unlabeled.save_to_disk(tmp_path / "unlabeled")
    with pytest.raises(DataError, match=r"no label column \(columns: img, kind\); set label_column"):
        load_hf_images(tmp_path / "unlabeled", cache_dir=tmp_path / "cache")


def test_bad_rows_are_named(tmp_path):
    corrupt = Dataset.from_dict({"img": [grey(1), {"bytes": b"not an image", "path": None}], "label": [0, 1]},
                                features=FEATURES)
    DatasetDict({"train": pets([0, 1]), "test": corrupt}).save_to_disk(tmp_path / "corrupt")
    with pytest.raises(DataError, match=r"cannot read image row 1 of column 'img' in .*corrupt \(test\)"):
        load_hf_images(tmp_path / "corrupt", cache_dir=tmp_path / "cache")
    Dataset.from_dict({"img": [grey(1)] * 3, "label": [0, -1, 1]}, features=FEATURES).save_to_disk(tmp_path / "unlabeled")
    with pytest.raises(DataError, match=r"row 1 of column 'label' in .*unlabeled has no label"):
        load_hf_images(tmp_path / "unlabeled", cache_dir=tmp_path / "cache")
    mixed = Dataset.from_dict({"img": [grey(1), grey(2, shape=(5, 4))], "label": [0, 1]}, features=FEATURES)
    mixed.save_to_disk(tmp_path / "mixed")
    with pytest.raises(DataError, match=r"row 1 of column 'img' .* is 4x5 .*; set image_size"):
        load_hf_images(tmp_path / "mixed", test_fraction=0.5, cache_dir=tmp_path / "cache")
    assert load_hf_images(tmp_path / "mixed", test_fraction=0.5, image_size=2, cache_dir=tmp_path / "cache")
    (tmp_path / "rows.jsonl").write_text('{"image": "gone.png", "label": 0}\n{"image": "gone.png", "label": 1}\n')
    with pytest.raises(DataError, match=r"row 0 of column 'image' in .*rows\.jsonl names the image file .*gone\.png, "
                                        "which does not exist"):
        load_hf_images(tmp_path / "rows.jsonl", test_fraction=0.5, cache_dir=tmp_path / "cache")


def test_missing_unreadable_and_empty_paths_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="missing does not exist; check the data path"):
        load_hf_images(tmp_path / "missing", cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty is neither a save_to_disk folder .* nor \.parquet"):
        load_hf_images(tmp_path / "empty", cache_dir=tmp_path / "cache")
    (tmp_path / "bad.parquet").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match=r"cannot read .*bad\.parquet as a Hugging Face dataset"):
        load_hf_images(tmp_path / "bad.parquet", cache_dir=tmp_path / "cache")
    pets([0, 1]).save_to_disk(tmp_path / "broken")
    next((tmp_path / "broken").glob("*.arrow")).write_bytes(b"xx" * 100)
    with pytest.raises(DataError, match=r"cannot read .*broken as a Hugging Face dataset"):
        load_hf_images(tmp_path / "broken", cache_dir=tmp_path / "cache")
    DatasetDict({"test": pets([0, 1])}).save_to_disk(tmp_path / "untrained")
    with pytest.raises(DataError, match=r"has the splits \['test'\] but no 'train'"):
        load_hf_images(tmp_path / "untrained", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="channels 2"):
        load_hf_images(tmp_path / "broken", channels=2, cache_dir=tmp_path / "cache")
