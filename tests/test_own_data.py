"""The user's own data: image folders (decoded once, cached, memory-mapped) and CSV / Parquet tables."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as parquet
import pytest
import torch
from PIL import Image

from distillery.data import load_idx_pair
from distillery.data.image_folder import folder_fingerprint, load_image_folder
from distillery.data.memmap import MemmapInputs
from distillery.data.tables import load_table
from distillery.data.transforms import stratified_split
from distillery.errors import ConfigError, DataError


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) written as the file type its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def grey_folder(root: Path, classes=("cat", "dog", "eel"), per_class=5) -> Path:
    """Class k, image i is 3x4 (height x width) of the single value 50 k + i."""
    for label, name in enumerate(classes):
        for index in range(per_class):
            write_image(root / name / f"{index:02d}.png", np.full((3, 4), 50 * label + index))
    return root


def values_of(dataset) -> np.ndarray:
    """One pixel value (0..255) per sample, from float inputs in [0, 1]."""
    inputs = dataset.inputs[torch.arange(len(dataset))]
    return (inputs.flatten(1)[:, 0] * 255).round().numpy().astype(int)


# ---------------------------------------------------------------- image folders: layouts and values


def test_flat_grey_folder_round_trip(tmp_path):
    root = grey_folder(tmp_path / "pets")
    train, test = load_image_folder(root, cache_dir=tmp_path / "cache", seed=3)
    assert train.class_names == test.class_names == ["cat", "dog", "eel"]
    assert isinstance(train.inputs, MemmapInputs) and train.input_shape == (1, 3, 4)
    assert (len(train), len(test)) == (12, 3)
    assert sorted(test.labels.tolist()) == [0, 1, 2]  # stratified: one of each class's five
    for dataset in (train, test):
        values = values_of(dataset)
        np.testing.assert_array_equal(values // 50, dataset.labels.numpy())
        batch = dataset.inputs[torch.arange(len(dataset))]
        assert batch.dtype == torch.float32
        torch.testing.assert_close(batch, torch.from_numpy(values / np.float32(255)).float()[:, None, None, None]
                                   .expand(-1, 1, 3, 4), rtol=0, atol=0)
    seen = np.concatenate([values_of(train), values_of(test)])
    assert sorted(seen) == sorted(50 * k + i for k in range(3) for i in range(5))


def test_split_layout_rgb_and_class_order(tmp_path):
    root = tmp_path / "colours"
    for split, count in (("train", 3), ("test", 2)):
        for label, name in enumerate(("blue", "red")):
            for index in range(count):
                write_image(root / split / name / f"{index}.png", np.full((2, 2, 3), (label, 10 + index, 200)))
    train, test = load_image_folder(root, cache_dir=tmp_path / "cache")
    assert train.class_names == ["blue", "red"] and train.input_shape == (3, 2, 2)
    assert (len(train), len(test)) == (6, 4) and train.source == str(root / "train")
    pixels = (test.inputs[torch.arange(4)][:, :, 0, 0] * 255).round().long()
    assert pixels.tolist() == [[0, 10, 200], [0, 11, 200], [1, 10, 200], [1, 11, 200]]
    assert test.labels.tolist() == [0, 0, 1, 1]
    train, test = load_image_folder(root, class_names=["red", "blue"], cache_dir=tmp_path / "cache")
    assert train.class_names == ["red", "blue"] and test.labels.tolist() == [1, 1, 0, 0]


def test_channels_default_and_forced(tmp_path):
    root = tmp_path / "mixed"
    write_image(root / "a" / "grey.png", np.full((2, 2), 90))
    write_image(root / "b" / "red.png", np.full((2, 2, 3), (255, 0, 0)))
    write_image(root / "b" / "red2.bmp", np.full((2, 2, 3), (255, 0, 0)))
    train, test = load_image_folder(root, cache_dir=tmp_path / "cache", test_fraction=0.3)
    assert train.input_shape == (3, 2, 2)  # one colour image makes every image RGB
    everything = torch.cat([train.inputs[torch.arange(len(train))], test.inputs[torch.arange(len(test))]])
    as_bytes = (everything[:, :, 0, 0] * 255).round().long().tolist()
    assert sorted(as_bytes) == [[90, 90, 90], [255, 0, 0], [255, 0, 0]]
    train, test = load_image_folder(root, channels=1, cache_dir=tmp_path / "cache", test_fraction=0.3)
    grey = sorted(values_of(train).tolist() + values_of(test).tolist())
    assert train.input_shape == (1, 2, 2) and grey == [76, 76, 90]  # ITU-R 601 luma of pure red: 0.299 * 255
    with pytest.raises(ConfigError, match="channels 2"):
        load_image_folder(root, channels=2, cache_dir=tmp_path / "cache")


def test_grey_palette_gif_counts_as_grey(tmp_path):
    root = tmp_path / "gifs"
    for name, value in (("a", 30), ("b", 220)):
        write_image(root / name / "x.gif", np.full((2, 2), value))
        write_image(root / name / "y.gif", np.full((2, 2), value))
    train, test = load_image_folder(root, cache_dir=tmp_path / "cache", test_fraction=0.5)
    assert train.input_shape == (1, 2, 2)
    assert sorted(values_of(train).tolist() + values_of(test).tolist()) == [30, 30, 220, 220]


def test_fashion_mnist_pngs_match_the_idx_reader(tmp_path, fashion_mnist_dir):
    reference = load_idx_pair(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz",
                              fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    labels = reference.labels.tolist()
    # The first four images of each class: three to train/, one to test/ (both splits need every class).
    firsts = [[row for row in range(200) if labels[row] == label][:4] for label in range(10)]
    splits = {"train": sorted(row for rows in firsts for row in rows[:3]), "test": sorted(rows[3] for rows in firsts)}
    images = (reference.inputs[:200, 0] * 255).round().to(torch.uint8).numpy()
    for split, rows in splits.items():
        for row in rows:
            write_image(tmp_path / "fm" / split / str(labels[row]) / f"{row:03d}.png", images[row])
    train, test = load_image_folder(tmp_path / "fm", cache_dir=tmp_path / "cache")
    for dataset, rows in ((train, splits["train"]), (test, splits["test"])):
        order = sorted(rows, key=lambda row: (labels[row], row))  # the folder's order: by class, then by file
        assert torch.equal(dataset.inputs[torch.arange(len(dataset))], reference.inputs[order])
        assert dataset.labels.tolist() == [labels[row] for row in order]
    assert (len(train), len(test)) == (30, 10) and train.class_names == [str(label) for label in range(10)]


# ---------------------------------------------------------------- image folders: the cache


def test_second_load_decodes_nothing_and_a_changed_file_decodes_again(tmp_path, monkeypatch):
    root, cache = grey_folder(tmp_path / "pets"), tmp_path / "cache"
    first_train, _ = load_image_folder(root, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob("*.tmp"))
    files = sorted(root.rglob("*.png"))
    before = folder_fingerprint(root, files, None, None)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", no_decoding)
    again_train, _ = load_image_folder(root, cache_dir=cache)
    assert torch.equal(values_tensor(again_train), values_tensor(first_train))

    changed = root / "cat" / "00.png"
    monkeypatch.undo()
    write_image(changed, np.full((3, 4), 7))
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))  # a distinct mtime even on coarse file systems
    changed_once = folder_fingerprint(root, files, None, None)
    assert changed_once != before
    os.utime(changed, ns=(2_000_000_000, 2_000_000_000))  # same bytes, newer time: decoded again to be safe
    assert folder_fingerprint(root, files, None, None) != changed_once
    assert folder_fingerprint(root, files, 5, None) != folder_fingerprint(root, files, None, None)
    assert folder_fingerprint(root, files, None, 1) != folder_fingerprint(root, files, None, None)
    monkeypatch.setattr(Image, "open", no_decoding)
    with pytest.raises(AssertionError, match="an image was opened"):
        load_image_folder(root, cache_dir=cache)
    monkeypatch.undo()
    train, test = load_image_folder(root, cache_dir=cache)
    assert 7 in values_of(train).tolist() + values_of(test).tolist()
    assert len(list(cache.glob("*.npy"))) == 2


def values_tensor(dataset) -> torch.Tensor:
    return dataset.inputs[torch.arange(len(dataset))]


def test_cache_directory_from_the_environment_and_a_bad_cache_is_rebuilt(tmp_path, monkeypatch):
    root = grey_folder(tmp_path / "pets", per_class=2)
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "env-cache"))
    load_image_folder(root, test_fraction=0.5)
    (cached,) = (tmp_path / "env-cache").glob("image-folder-*.npy")
    np.save(cached, np.zeros((2, 2), np.float32))  # wrong shape: the reader must not trust it
    train, test = load_image_folder(root, test_fraction=0.5)
    assert sorted(values_of(train).tolist() + values_of(test).tolist()) == [0, 1, 50, 51, 100, 101]
    assert np.load(cached).shape == (6, 1, 3, 4)


def test_progress_bar_only_for_many_images(tmp_path, capsys):
    few = grey_folder(tmp_path / "few", per_class=2)
    load_image_folder(few, cache_dir=tmp_path / "cache", test_fraction=0.5)
    assert "decoding images" not in capsys.readouterr().err
    many = tmp_path / "many"
    for index in range(202):
        write_image(many / ("a" if index % 2 else "b") / f"{index}.png", np.full((1, 1), index))
    load_image_folder(many, cache_dir=tmp_path / "cache")
    assert "decoding images" in capsys.readouterr().err


# ---------------------------------------------------------------- image folders: resizing


def test_resize_shorter_side_and_centre_crop(tmp_path):
    # A 6 x 48 (width x height) portrait image of three 16-row bands: 10, 200, 30.
    portrait = np.concatenate([np.full((16, 6), value) for value in (10, 200, 30)])
    root = tmp_path / "shapes"
    write_image(root / "a" / "portrait.png", portrait)
    write_image(root / "b" / "portrait.png", portrait)
    train, test = load_image_folder(root, image_size=3, cache_dir=tmp_path / "cache", test_fraction=0.5)
    assert train.input_shape == (1, 3, 3)
    assert torch.equal(train.inputs[torch.arange(1)], torch.full((1, 1, 3, 3), 200 / 255.0))
    # (height, width) 6 x 16 of a 6 x 48 landscape: no scaling, the middle 16 columns.
    landscape = portrait.T
    write_image(root / "a" / "portrait.png", landscape)
    write_image(root / "b" / "portrait.png", landscape)
    train, _ = load_image_folder(root, image_size=(6, 16), cache_dir=tmp_path / "cache", test_fraction=0.5)
    assert train.input_shape == (1, 6, 16)
    assert torch.equal(train.inputs[torch.arange(1)], torch.full((1, 1, 6, 16), 200 / 255.0))
    with pytest.raises(ConfigError, match="image_size"):
        load_image_folder(root, image_size=(0, 4), cache_dir=tmp_path / "cache")


def test_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "sizes"
    write_image(root / "a" / "small.png", np.zeros((2, 2)))
    write_image(root / "b" / "wide.png", np.zeros((2, 5)))
    with pytest.raises(DataError) as caught:
        load_image_folder(root, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "small.png" in message and "wide.png" in message and "5x2" in message and "image_size" in message
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written is left behind
    train, _ = load_image_folder(root, image_size=2, cache_dir=tmp_path / "cache", test_fraction=0.5)
    assert train.input_shape == (1, 2, 2)


# ---------------------------------------------------------------- image folders: errors


def test_image_folder_errors_name_the_place_and_the_fix(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="nowhere does not exist"):
        load_image_folder(tmp_path / "nowhere", cache_dir=cache)
    a_file = write_image(tmp_path / "single.png", np.zeros((2, 2)))
    with pytest.raises(DataError, match="single.png is not a directory"):
        load_image_folder(a_file, cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images and no class folders"):
        load_image_folder(tmp_path / "empty", cache_dir=cache)
    write_image(tmp_path / "loose" / "x.png", np.zeros((2, 2)))
    with pytest.raises(DataError, match="loose holds images but no class folders.*subfolder"):
        load_image_folder(tmp_path / "loose", cache_dir=cache)
    root = grey_folder(tmp_path / "pets", per_class=2)
    write_image(root / "cat" / ".ipynb_checkpoints" / "00.png", np.zeros((3, 4)))  # a copy, not a sample
    (root / "cat" / "._01.png").write_bytes(b"resource fork")
    train, test = load_image_folder(root, cache_dir=cache, test_fraction=0.5)
    assert len(train) + len(test) == 6
    (root / "fox").mkdir()
    (root / "fox" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="class folder .*fox has no images"):
        load_image_folder(root, cache_dir=cache)
    with pytest.raises(ConfigError, match="needs data.path"):
        load_image_folder(None, cache_dir=cache)


def test_corrupt_image_is_named(tmp_path):
    root = grey_folder(tmp_path / "pets", per_class=2)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png.*replace or delete"):
        load_image_folder(root, cache_dir=tmp_path / "cache")
    good = (root / "cat" / "00.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])  # a valid header, truncated pixels
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(root, channels=1, cache_dir=tmp_path / "cache")


def test_split_layout_errors(tmp_path):
    root = tmp_path / "split"
    write_image(root / "train" / "a" / "0.png", np.zeros((2, 2)))
    with pytest.raises(DataError, match="train/ folder but no test/"):
        load_image_folder(root, cache_dir=tmp_path / "cache")
    write_image(root / "test" / "b" / "0.png", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"only in test: \['b'\], only in train: \['a'\]"):
        load_image_folder(root, cache_dir=tmp_path / "cache")


def test_class_names_must_name_exactly_the_folders(tmp_path):
    root = grey_folder(tmp_path / "pets", per_class=2)
    with pytest.raises(DataError, match=r"folders not named \['eel'\], names with no folder \['emu'\]"):
        load_image_folder(root, class_names=["cat", "dog", "emu"], cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="more than once"):
        load_image_folder(root, class_names=["cat", "dog", "eel", "cat"], cache_dir=tmp_path / "cache")


def test_stratified_split_is_seeded_and_proportional():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(test) == 20 and np.bincount(labels[test]).tolist() == [10, 6, 4]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert np.array_equal(test, stratified_split(labels, 0.2, seed=0)[1])
    assert not np.array_equal(test, stratified_split(labels, 0.2, seed=1)[1])
    for fraction in (0.0, 1.0):
        with pytest.raises(ConfigError, match="test_fraction"):
            stratified_split(labels, fraction, seed=0)


# ---------------------------------------------------------------- tables


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_csv_round_trip_with_text_labels_and_a_test_file(tmp_path):
    train_path = write_csv(tmp_path / "train.csv", "x,label,y\n1,b,0.5\n2,a,-1.25\n3,c,4\n4,a,8")
    test_path = write_csv(tmp_path / "test.csv", "y,x,label\n9,5,c\n10,6,b")
    train, test = load_table(train_path, test_path=test_path)
    assert train.class_names == test.class_names == ["a", "b", "c"]
    assert train.inputs.dtype == torch.float32 and train.input_shape == (2,)
    assert train.inputs.tolist() == [[1, 0.5], [2, -1.25], [3, 4], [4, 8]]  # unscaled, columns x then y
    assert train.labels.tolist() == [1, 0, 2, 0]
    assert test.inputs.tolist() == [[5, 9], [6, 10]] and test.labels.tolist() == [2, 1]


def test_numeric_labels_sort_as_numbers(tmp_path):
    rows = [f"{index},{value}" for index, value in enumerate([10, 9, 2, 10, 9, 2])]
    path = write_csv(tmp_path / "t.csv", "\n".join(["f,label", *rows]))
    train, test = load_table(path, test_fraction=0.5)
    assert train.class_names == ["2", "9", "10"]
    for dataset in (train, test):
        for features, label in zip(dataset.inputs.tolist(), dataset.labels.tolist()):
            assert [10, 9, 2, 10, 9, 2][int(features[0])] == int(train.class_names[label])


def test_parquet_round_trip_with_bool_feature_and_float_labels(tmp_path):
    table = pa.table({"size": pa.array([1.5, 2.5, 3.5, 4.5], pa.float64()), "big": [False, True, False, True],
                      "count": pa.array([1, 2, 3, 4], pa.int32()), "kind": [1.0, 2.0, 1.0, 3.5]})
    parquet.write_table(table, tmp_path / "t.parquet")
    test = pa.table({"size": [9.0], "big": [True], "count": pa.array([7], pa.int32()), "kind": [0.5]})
    parquet.write_table(test, tmp_path / "test.pq")
    train, held_out = load_table(tmp_path / "t.parquet", label_column="kind", test_path=tmp_path / "test.pq")
    assert train.class_names == ["0.5", "1", "2", "3.5"]
    assert train.inputs.tolist() == [[1.5, 0, 1], [2.5, 1, 2], [3.5, 0, 3], [4.5, 1, 4]]
    assert train.labels.tolist() == [1, 2, 1, 3] and held_out.labels.tolist() == [0]
    only, _ = load_table(tmp_path / "t.parquet", label_column="kind", feature_columns=["count"],
                         test_path=tmp_path / "test.pq")
    assert only.inputs.tolist() == [[1], [2], [3], [4]]


def test_given_class_names_order_the_labels_and_refuse_unknown_values(tmp_path):
    path = write_csv(tmp_path / "t.csv", "f,label\n1,yes\n2,no\n3,yes\n4,no")
    train, test = load_table(path, class_names=["yes", "no"], test_fraction=0.5)
    assert train.class_names == ["yes", "no"]
    inputs, labels = torch.cat([train.inputs, test.inputs]), torch.cat([train.labels, test.labels])
    for features, label in zip(inputs.tolist(), labels.tolist()):
        assert label == (0 if features[0] % 2 else 1)
    with pytest.raises(DataError, match="label 'yes', which is not in class_names"):
        load_table(path, class_names=["no", "maybe"])


@pytest.mark.parametrize("text, message", [
    ("size,colour,label\n1,red,a\n2,blue,b", "'colour'.*not numeric.*'red'"),
    ("size,label\n1,a\nx7,b\n3,a", "'size'.*data row 2 holds 'x7'"),
    ("size,weight,label\n1,2,a\n3,4,b\n5,,a", "'weight'.*data row 3 .*empty"),
    ("size,label\n1,a\n2,\n3,b", "label column 'label'.*data row 2"),
])
def test_non_numeric_and_missing_values_are_located(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_table(write_csv(tmp_path / "t.csv", text))


def test_a_nan_in_a_parquet_table_is_located(tmp_path):
    parquet.write_table(pa.table({"v": [1.0, float("nan")], "label": [0, 1]}), tmp_path / "nan.parquet")
    with pytest.raises(DataError, match="'v'.*data row 2"):
        load_table(tmp_path / "nan.parquet")


def test_table_errors(tmp_path):
    with pytest.raises(DataError, match="absent.csv does not exist"):
        load_table(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="data.txt is neither CSV nor Parquet"):
        load_table(write_csv(tmp_path / "data.txt", "a,label\n1,2"))
    with pytest.raises(DataError, match="no column 'target'; its columns are size, label"):
        load_table(write_csv(tmp_path / "t.csv", "size,label\n1,a\n2,b"), label_column="target")
    with pytest.raises(DataError, match="no column 'weight'"):
        load_table(tmp_path / "t.csv", feature_columns=["weight"])
    with pytest.raises(DataError, match="header.csv has no data rows"):
        load_table(write_csv(tmp_path / "header.csv", "size,label"))
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(DataError, match="zero.csv"):
        load_table(tmp_path / "zero.csv")
    with pytest.raises(DataError, match="only the class 'a'.*at least 2 classes"):
        load_table(write_csv(tmp_path / "one.csv", "size,label\n1,a\n2,a"))
    with pytest.raises(DataError, match="no feature columns"):
        load_table(write_csv(tmp_path / "bare.csv", "label\na\nb"))
    with pytest.raises(ConfigError, match="needs data.path"):
        load_table(None)


def test_breast_cancer_csv_round_trip(tmp_path):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    header = ",".join([*bunch.feature_names, "diagnosis"])
    rows = [",".join([*(repr(float(v)) for v in features), str(label)])
            for features, label in zip(bunch.data, bunch.target)]
    path = write_csv(tmp_path / "breast_cancer.csv", "\n".join([header, *rows]))
    train, test = load_table(path, label_column="diagnosis", seed=0)
    assert train.class_names == ["0", "1"] and train.input_shape == (30,)
    assert (len(train), len(test)) == (455, 114)
    everything = torch.cat([train.inputs, test.inputs])
    expected = torch.from_numpy(bunch.data.astype(np.float32))
    # Rows come back split, each in file order: match them by content.
    assert torch.equal(everything[everything[:, 0].argsort(stable=True)].sort(dim=0).values,
                       expected.sort(dim=0).values)
    labels = torch.cat([train.labels, test.labels])
    assert labels.sum() == int(bunch.target.sum())
    assert abs(test.labels.float().mean() - bunch.target.mean()) < 0.01  # stratified
