"""The user's own data through the config and the Python API: image folders, tables, npz layouts, class names,
torch Datasets, and a normaliser per feature for tables."""
import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, snapshot, write_yaml
from PIL import Image

import distillery
from distillery.app.steps.evaluation import evaluate_checkpoint
from distillery.data import ArrayDataset, Normalizer, load_dataset
from distillery.errors import DataError


def write_image_folder(root, per_class: int = 12, size: int = 8):
    """Two classes a small CNN tells apart at once: dark images and bright ones."""
    generator = np.random.default_rng(0)
    for name, low, high in (("dark", 0, 90), ("bright", 160, 256)):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = generator.integers(low, high, (size, size), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{index}.png")
    return root


def test_an_image_folder_trains_from_the_config_and_its_checkpoint_evaluates_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    folder = write_image_folder(tmp_path / "images")
    data = {"dataset": "imagefolder", "path": str(folder), "val_fraction": 0.2, "test_fraction": 0.25,
            "image_size": 6}
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "run", data=data, train={"epochs": 5, "lr": 0.05}))
    assert_ok(invoke("train", str(config)))
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["input_shape"] == [1, 6, 6] and model["class_names"] == ["bright", "dark"]
    assert model["dataset"]["options"] == {"image_size": 6, "test_fraction": 0.25}
    metrics = evaluate_checkpoint(tmp_path / "run", latency=False)
    assert metrics["samples"] == 6 and metrics["accuracy"] == 1.0


def test_a_csv_table_trains_with_a_normaliser_per_feature(tmp_path):
    import pyarrow as pa
    import pyarrow.csv
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    columns = {name: cancer.data[:, index] for index, name in enumerate(cancer.feature_names)}
    pyarrow.csv.write_csv(pa.table({**columns, "target": cancer.target}), tmp_path / "cancer.csv")
    data = {"dataset": "csv", "path": str(tmp_path / "cancer.csv"), "label_column": "target"}
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "run", data=data, train={"epochs": 30, "batch_size": 32, "lr": 0.01}))
    assert_ok(invoke("train", str(config)))
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    preprocessing = model["preprocessing"]
    assert model["input_shape"] == [30] and len(preprocessing["mean"]) == 30 and model["class_names"] == ["0", "1"]
    # Per feature: a mean area in the hundreds beside a mean smoothness near 0.1.
    assert preprocessing["mean"][3] > 300 and preprocessing["mean"][4] < 1
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["accuracy"] > 0.9


def test_normaliser_fits_each_feature_of_a_table_on_its_own():
    inputs = torch.tensor([[0.0, 1000.0], [2.0, 3000.0], [4.0, 5000.0]])
    normalizer = Normalizer.fit(ArrayDataset(inputs, torch.tensor([0, 1, 0]), ["a", "b"]))
    assert normalizer.mean == pytest.approx((2.0, 3000.0))
    assert normalizer.std == pytest.approx((8 ** 0.5 / 3 ** 0.5, 8e6 ** 0.5 / 3 ** 0.5))
    torch.testing.assert_close(normalizer(inputs)[:, 0], normalizer(inputs)[:, 1])


def write_npz(tmp_path, train_x):
    labels = np.arange(len(train_x)) % 2
    np.savez(tmp_path / "data.npz", x_train=train_x, y_train=labels, x_test=train_x[:4], y_test=labels[:4])
    return tmp_path / "data.npz"


def test_channels_last_images_are_refused_unless_the_layout_says_so():
    images = np.random.default_rng(0).integers(0, 256, (8, 5, 5, 3), dtype=np.uint8)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        path = write_npz(Path(directory), images)
        with pytest.raises(DataError, match="looks like \\[N, H, W, C\\].*data.layout: channels_last"):
            load_dataset("npz", path)
        train, _ = load_dataset("npz", path, layout="channels_last")
        assert train.input_shape == (3, 5, 5)
        torch.testing.assert_close(train.inputs, torch.from_numpy(np.moveaxis(images, -1, 1)).float() / 255)
        first, _ = load_dataset("npz", write_npz(Path(directory), np.moveaxis(images, -1, 1)))
        torch.testing.assert_close(first.inputs, train.inputs)


def test_class_names_rename_any_source_and_a_wrong_count_is_one_line(tmp_path):
    train, test = load_dataset("digits", class_names=[f"digit {n}" for n in range(10)])
    assert train.class_names[3] == "digit 3" and test.class_names == train.class_names
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "run", data={"class_names": ["a", "b"]}))
    before = snapshot(tmp_path)
    assert_user_error(invoke("train", str(config)), "class_names gives 2 names but dataset 'digits' has 10")
    assert snapshot(tmp_path) == before


def test_an_option_the_source_has_no_use_for_is_named(tmp_path):
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "run", data={"image_size": 32}))
    assert_user_error(invoke("train", str(config)), "dataset 'digits' has no option 'image_size'")


def test_the_python_api_takes_a_torch_dataset_of_samples():
    class Samples(torch.utils.data.Dataset):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.inputs = torch.randn(64, 4, generator=generator)
            self.labels = (self.inputs[:, 0] > 0).long()

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return self.inputs[index], self.labels[index]

    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    result = distillery.train(model, Samples(), Samples(), epochs=30, lr=0.05, batch_size=16, progress=False,
                              device="cpu")
    assert result.metrics["val/accuracy"] > 0.9


DATASET_MODULE = '''
from pathlib import Path

import torch

MARKER = Path("factory-ran")


class Samples(torch.utils.data.Dataset):
    classes = ["low", "high"]

    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(count, 5, generator=generator)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return self.inputs[index], int(self.inputs[index, 0] > 0)


def make_datasets(count=200):
    MARKER.write_text("")
    return Samples(count, 0), Samples(count // 2, 1)


def broken():
    raise RuntimeError("the data server is down")
'''


def test_a_users_dataset_factory_trains_and_its_checkpoint_runs_it_only_when_allowed(tmp_path, monkeypatch):
    (tmp_path / "user_data_b.py").write_text(DATASET_MODULE)
    monkeypatch.chdir(tmp_path)
    data = {"dataset": "python", "factory": "user_data_b:make_datasets", "factory_options": {"count": 300}}
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "run", data=data,
                                                          train={"epochs": 20, "lr": 0.02, "batch_size": 32}))
    assert_ok(invoke("train", str(config)))
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["class_names"] == ["low", "high"] and model["input_shape"] == [5]
    (tmp_path / "factory-ran").unlink()
    # model.json names the factory: a file may not make code run unless the user allows that factory.
    assert_user_error(invoke("evaluate", str(tmp_path / "run")), "--allow-factory user_data_b:make_datasets")
    assert not (tmp_path / "factory-ran").exists()
    result = invoke("evaluate", str(tmp_path / "run"), "--allow-factory", "user_data_b:make_datasets", "--no-latency")
    assert_ok(result)
    assert (tmp_path / "factory-ran").exists()
    broken = write_yaml(tmp_path / "broken.yaml", run_config(
        tmp_path / "broken-run", data={"dataset": "python", "factory": "user_data_b:broken"}))
    assert_user_error(invoke("train", str(broken)), "user_data_b:broken", "RuntimeError: the data server is down")
