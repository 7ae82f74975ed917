"""The bad-input battery: every case goes through the CLI and must end with a non-zero exit, one helpful line
on stderr, no traceback, and not one byte changed, created or removed on disk (every file is hashed).

Hostile files (pickles that create a marker file when unpickled) must be refused without being run.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, write_npz_dataset, write_yaml
from safetensors.torch import load_file, save_file

from distillery.data import load_dataset

REPO = Path(__file__).resolve().parents[1]


class CreatesMarker:
    """Unpickling this object calls ``open(marker, "w")``: a harmless stand-in for code a hostile file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@dataclass
class Workspace:
    tmp: Path
    teacher: Path       # a finished teacher run (shared by the session: hashed too)
    existing: Path      # a private copy of a finished run, the target of --overwrite in most cases
    interrupted_source: Path

    @property
    def marker(self) -> Path:
        return self.tmp / "MARKER-code-ran"

    def config(self, document: dict | str, name: str = "bad.yaml") -> Path:
        return write_yaml(self.tmp / name, document)

    def run(self, **sections) -> Path:
        """A config whose output is the finished run, so each case also proves --overwrite touched nothing."""
        return self.config(run_config(self.existing, **sections))

    def distill(self, **distill) -> Path:
        return self.run(distill={"teacher": str(self.teacher), **distill})

    def teacher_copy(self, name: str = "teacher-copy") -> Path:
        copy = self.tmp / name
        shutil.copytree(self.teacher, copy)
        return copy

    def interrupted(self) -> Path:
        copy = self.tmp / "interrupted"
        shutil.copytree(self.interrupted_source, copy)
        return copy

    def npz(self, name: str, *, inputs: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
        directory = write_npz_dataset(self.tmp / name)
        with np.load(directory / "train.npz") as archive:
            arrays = {"x": archive["x"] if inputs is None else inputs, "y": archive["y"] if labels is None else labels}
        np.savez(directory / "train.npz", **arrays)
        return directory

    def pickle_at(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(CreatesMarker(self.marker)))
        return path


def _tree_hashes(*roots: Path) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for root in roots for path in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory) -> Path:
    """A run stopped by SIGINT at step 7 (in this process), its training state saved."""
    directory = tmp_path_factory.mktemp("interrupted")
    config = write_yaml(directory / "run.yaml", run_config(
        directory / "run", model={"name": "step_model:make"}, train={"epochs": 2, "batch_size": 64, "lr": 0.01}))
    os.environ["DISTILLERY_TEST_SIGNAL_AT"] = "7:SIGINT"
    try:
        assert invoke("train", config).exit_code == 130
    finally:
        del os.environ["DISTILLERY_TEST_SIGNAL_AT"]
    return directory / "run"


@pytest.fixture
def workspace(tmp_path, teacher_run, interrupted_run) -> Workspace:
    existing = tmp_path / "existing"
    shutil.copytree(teacher_run, existing)
    return Workspace(tmp_path, teacher_run, existing, interrupted_run)


# ---------------------------------------------------------------- the cases: (arguments, fragments of the one line)

Case = Callable[[Workspace], tuple[list, tuple[str, ...]]]
CASES: dict[str, Case] = {}


def register_case(name: str, builder: Case) -> Case:
    """Add a case; a name used twice fails at import (the second would silently replace the first)."""
    if name in CASES:
        raise ValueError(f"bad-input case {name!r} is registered twice")
    CASES[name] = builder
    return builder


def case(name: str):
    return lambda builder: register_case(name, builder)


def _out_of_range(name: str, section: str, key: str, value, fragment: str) -> None:
    def builder(ws: Workspace):
        if section == "distill":
            config = ws.distill(**{key: value})
        else:
            config = ws.run(**{section: {**run_config(ws.existing).get(section, {}), key: value}})
        return ["distill" if section == "distill" else "train", config, "--overwrite"], (f"{section}.{key}", fragment)
    register_case(name, builder)


for _name, _section, _key, _value, _fragment in [
    ("negative-lr", "train", "lr", -0.1, "greater than 0"),
    ("zero-lr", "train", "lr", 0, "greater than 0"),
    ("zero-epochs", "train", "epochs", 0, "greater than or equal to 1"),
    ("zero-batch-size", "train", "batch_size", 0, "greater than or equal to 1"),
    ("negative-weight-decay", "train", "weight_decay", -1e-4, "greater than or equal to 0"),
    ("label-smoothing-one", "train", "label_smoothing", 1.0, "less than 1"),
    ("zero-grad-clip", "train", "grad_clip", 0, "greater than 0"),
    ("zero-checkpoint-interval", "train", "checkpoint_every_steps", 0, "greater than or equal to 1"),
    ("val-fraction-one", "data", "val_fraction", 1.0, "less than 1"),
    ("temperature-zero", "distill", "temperature", 0, "greater than 0"),
    ("temperature-negative", "distill", "temperature", -2, "greater than 0"),
    ("alpha-above-one", "distill", "alpha", 1.5, "less than or equal to 1"),
    ("alpha-below-zero", "distill", "alpha", -0.1, "greater than or equal to 0"),
    ("unknown-method", "distill", "method", "hintn", "'hinton'"),
    ("temperature-infinite", "distill", "temperature", float("inf"), "finite number"),
    ("lr-nan", "train", "lr", float("nan"), "finite number"),
    ("grad-clip-infinite", "train", "grad_clip", float("inf"), "finite number"),
]:
    _out_of_range(_name, _section, _key, _value, _fragment)


@case("malformed-yaml")
def _(ws):
    config = ws.config(f"output_dir: {ws.existing}\ntrain: [1, 2\n")
    return ["train", config, "--overwrite"], (str(config), "not valid YAML", "line")


@case("yaml-not-a-mapping")
def _(ws):
    config = ws.config("- train\n- distill\n")
    return ["train", config], (str(config), "mapping")


@case("unknown-top-level-key")
def _(ws):
    document = run_config(ws.existing)
    document["seeed"] = 3
    return ["train", ws.config(document), "--overwrite"], ("'seeed'", "did you mean 'seed'")


@case("unknown-nested-key")
def _(ws):
    return ["train", ws.run(train={"epoch": 2}), "--overwrite"], ("'train.epoch'", "did you mean 'epochs'")


@case("wrong-type-value")
def _(ws):
    return ["train", ws.run(train={"epochs": "many"}), "--overwrite"], ("train.epochs", "'many'")


@case("wrong-type-section")
def _(ws):
    return ["train", ws.run(data="digits"), "--overwrite"], ("data", "'digits'")


@case("missing-config-file")
def _(ws):
    return ["train", ws.tmp / "nowhere.yaml"], ("nowhere.yaml", "does not exist")


@case("no-config-and-no-resume")
def _(ws):
    return ["train"], ("give a run configuration", "--resume")


@case("malformed-set")
def _(ws):
    return ["train", ws.run(), "--overwrite", "--set", "train.epochs"], ("'train.epochs'", "key=value")


@case("unknown-model")
def _(ws):
    return ["train", ws.run(model={"name": "transformer"}), "--overwrite"], ("'transformer'", "mlp")


@case("unknown-model-keyword")
def _(ws):
    return ["train", ws.run(model={"name": "mlp", "hiden": [4]}), "--overwrite"], ("'hiden'", "did you mean 'hidden'")


@case("unknown-dataset")
def _(ws):
    return ["train", ws.run(data={"dataset": "imagenet"}), "--overwrite"], ("'imagenet'", "digits")


@case("missing-data-path")
def _(ws):
    missing = ws.tmp / "no-such-data"
    return ["train", ws.run(data={"dataset": "npz", "path": str(missing)}), "--overwrite"], (str(missing),)


@case("missing-teacher")
def _(ws):
    missing = ws.tmp / "no-such-teacher"
    return ["distill", ws.run(distill={"teacher": str(missing)}), "--overwrite"], (str(missing), "does not exist")


@case("finished-run-without-overwrite-or-resume")
def _(ws):
    return ["train", ws.run()], (str(ws.existing), "already holds a finished run", "--overwrite")


@case("output-dir-is-a-file")
def _(ws):
    target = ws.tmp / "a-file"
    target.write_text("not a directory")
    return ["train", ws.config(run_config(target))], (str(target), "is a file")


@case("labels-negative")
def _(ws):
    data = ws.npz("negative-labels", labels=np.array([-1] + [0, 1, 2] * 29 + [0, 1], dtype=np.int64))
    return ["train", ws.run(data={"dataset": "npz", "path": str(data)}), "--overwrite"], ("train.npz", "down to -1")


@case("labels-not-integers")
def _(ws):
    data = ws.npz("float-labels", labels=np.linspace(0, 2, 90))
    return ["train", ws.run(data={"dataset": "npz", "path": str(data)}), "--overwrite"], ("train.npz", "integer")


@case("labels-out-of-the-teachers-range")
def _(ws):
    # Labels 0..11 on digit-shaped inputs: twelve classes, which the ten-class teacher cannot predict.
    data = ws.npz("twelve-classes", labels=np.arange(90, dtype=np.int64) % 12)
    return (["distill", ws.run(data={"dataset": "npz", "path": str(data)}, distill={"teacher": str(ws.teacher)}),
             "--overwrite"], ("predicts 10 classes", "has 12"))


@case("nan-inputs")
def _(ws):
    inputs = np.random.default_rng(0).random((90, 1, 8, 8), dtype=np.float32)
    inputs[5, 0, 3, 3] = np.nan
    data = ws.npz("nan-inputs", inputs=inputs)
    return ["train", ws.run(data={"dataset": "npz", "path": str(data)}), "--overwrite"], ("train.npz", "NaN")


@case("inputs-and-labels-differ-in-count")
def _(ws):
    data = ws.npz("short-labels", labels=np.arange(80, dtype=np.int64) % 3)
    return ["train", ws.run(data={"dataset": "npz", "path": str(data)}), "--overwrite"], ("90 inputs", "80 labels")


@case("empty-dataset")
def _(ws):
    data = ws.npz("empty", inputs=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros(0, np.int64))
    return ["train", ws.run(data={"dataset": "npz", "path": str(data)}), "--overwrite"], ("train.npz", "no samples")


@case("class-count-mismatch-teacher-student")
def _(ws):
    data = write_npz_dataset(ws.tmp / "three-classes")
    return (["distill", ws.run(data={"dataset": "npz", "path": str(data)}, distill={"teacher": str(ws.teacher)}),
             "--overwrite"], (str(ws.teacher), "predicts 10 classes", "has 3"))


@case("feature-hook-path-does-not-exist")
def _(ws):
    config = ws.distill(method="fitnet", student_layer="features.7", teacher_layer="features.0")
    return ["distill", config, "--overwrite"], ("'features.7'", "valid paths")


@case("teacher-views-without-augmentation")
def _(ws):
    return ["distill", ws.distill(teacher_views=2), "--overwrite"], ("teacher_views", "data.augment")


@case("whole-config-check-fails")
def _(ws):
    document = run_config(ws.existing, distill={"teacher": str(ws.teacher), "method": "dkd"}, transfer={"labels": False})
    config = ws.config(document)
    return ["distill", config, "--overwrite"], (f"{config}: method 'dkd'", "labelled")


@case("unknown-device")
def _(ws):
    return ["train", ws.run(device="tpu"), "--overwrite"], ("'tpu'", "cpu")


@case("compile-with-feature-hooks")
def _(ws):
    config = ws.run(train={**run_config(ws.existing)["train"], "compile": True},
                    distill={"teacher": str(ws.teacher), "method": "fitnet", "student_layer": "features.0",
                             "teacher_layer": "features.0"})
    return ["distill", config, "--overwrite"], ("train.compile", "intermediate layers")


@case("unknown-device-born-again")
def _(ws):
    config = ws.run(device="tpu", distill={"teacher": str(ws.teacher), "generations": 1})
    return ["distill", config, "--overwrite"], ("'tpu'", "cpu")


@case("unknown-class-name")
def _(ws):
    return ["train", ws.run(data={"classes": ["3", "eleven"]}), "--overwrite"], ("data.classes", "'eleven'")


@case("user-model-is-not-a-module")
def _(ws):
    return ["train", ws.run(model={"name": "os:getcwd"}), "--overwrite"], ("'os:getcwd'", "not a torch.nn.Module")


@case("user-model-cannot-be-imported")
def _(ws):
    return ["train", ws.run(model={"name": "no_such_module:make"}), "--overwrite"], ("'no_such_module'", "PYTHONPATH")


@case("negative-hidden-width")
def _(ws):
    return ["train", ws.run(model={"name": "mlp", "hidden": [-1]}), "--overwrite"], ("hidden", "positive integers")


@case("dropout-out-of-range")
def _(ws):
    return ["train", ws.run(model={"name": "mlp", "dropout": 2}), "--overwrite"], ("dropout", "[0, 1)")


@case("negative-teacher-weight")
def _(ws):
    config = ws.run(distill={"teacher": [str(ws.teacher)] * 2, "teacher_weights": [1, -1]})
    return ["distill", config, "--overwrite"], ("teacher_weights", "non-negative")


@case("init-layer-map-path-does-not-exist")
def _(ws):
    config = ws.distill(init_from_teacher=True, init_layer_map={"nope": "features.0"})
    return ["distill", config, "--overwrite"], ("'nope'", "valid module paths")


@case("transfer-set-missing")
def _(ws):
    missing = ws.tmp / "no-transfer-data"
    config = ws.config(run_config(ws.existing, distill={"teacher": str(ws.teacher)},
                                  transfer={"dataset": "npz", "path": str(missing)}))
    return ["distill", config, "--overwrite"], (str(missing), "does not exist")


@case("attention-on-flat-features")
def _(ws):
    config = ws.distill(method="attention", student_layers=["features.0"], teacher_layers=["features.0"])
    return ["distill", config, "--overwrite"], ("'features.0'", "convolutional feature maps")


# ---------------------------------------------------------------- hostile and damaged files


@case("hostile-pickle-as-teacher-pt")
def _(ws):
    evil = ws.pickle_at(ws.tmp / "teacher.pt")
    return ["distill", ws.run(distill={"teacher": str(evil)}), "--overwrite"], (str(evil), "never unpickles")


@case("hostile-torch-save-as-teacher-pth")
def _(ws):
    evil = ws.tmp / "teacher.pth"
    torch.save(CreatesMarker(ws.marker), evil)
    return ["distill", ws.run(distill={"teacher": str(evil)}), "--overwrite"], (str(evil), "never unpickles")


@case("hostile-pickle-named-safetensors")
def _(ws):
    teacher = ws.teacher_copy()
    ws.pickle_at(teacher / "model.safetensors")
    return (["distill", ws.run(distill={"teacher": str(teacher)}), "--overwrite"],
            (str(teacher / "model.safetensors"), "corrupted"))


def _image_folder(ws, name: str, sizes=((6, 6), (6, 6))) -> Path:
    from PIL import Image

    root = ws.tmp / name
    for label, size in zip(("a", "b"), sizes):
        (root / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full(size, 40 * index, np.uint8), mode="L").save(root / label / f"{index}.png")
    return root


@case("imagefolder-corrupt-image")
def _(ws):
    root = _image_folder(ws, "images")
    (root / "b" / "broken.png").write_bytes(b"not a png at all")
    return (["train", ws.run(data={"dataset": "imagefolder", "path": str(root)}), "--overwrite"],
            ("broken.png",))


@case("imagefolder-images-of-two-sizes")
def _(ws):
    root = _image_folder(ws, "images", sizes=((6, 6), (7, 5)))
    return (["train", ws.run(data={"dataset": "imagefolder", "path": str(root)}), "--overwrite"], ("image_size",))


@case("csv-non-numeric-feature")
def _(ws):
    (ws.tmp / "table.csv").write_text("size,colour,label\n1.0,red,a\n2.0,blue,b\n3.0,red,a\n4.0,blue,b\n")
    return (["train", ws.run(data={"dataset": "csv", "path": str(ws.tmp / "table.csv")}), "--overwrite"],
            ("colour",))


@case("csv-missing-value")
def _(ws):
    (ws.tmp / "table.csv").write_text("size,weight,label\n1.0,3,a\n2.0,,b\n3.0,1,a\n4.0,2,b\n")
    return (["train", ws.run(data={"dataset": "csv", "path": str(ws.tmp / "table.csv")}), "--overwrite"],
            ("weight", "row"))


@case("csv-without-the-label-column")
def _(ws):
    (ws.tmp / "table.csv").write_text("size,weight,kind\n1.0,3,a\n2.0,1,b\n")
    return (["train", ws.run(data={"dataset": "csv", "path": str(ws.tmp / "table.csv")}), "--overwrite"],
            ("label", "kind"))


@case("npz-channels-last-images")
def _(ws):
    directory = ws.tmp / "rgb"
    directory.mkdir()
    images, labels = np.zeros((20, 6, 6, 3), np.uint8), np.arange(20) % 2
    np.savez(directory / "data.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    return (["train", ws.run(data={"dataset": "npz", "path": str(directory / "data.npz")}), "--overwrite"],
            ("data.layout: channels_last",))


@case("onnx-teacher-that-is-not-onnx")
def _(ws):
    (ws.tmp / "teacher.onnx").write_bytes(b"\x00 not a graph")
    return (["distill", ws.run(distill={"teacher": {"onnx": str(ws.tmp / "teacher.onnx")}}), "--overwrite"],
            ("teacher.onnx", "ONNX Runtime cannot load"))


@case("teacher-outputs-of-another-row-count")
def _(ws):
    np.save(ws.tmp / "outputs.npy", np.zeros((7, 10), np.float32))
    return (["distill", ws.run(distill={"teacher": {"outputs": str(ws.tmp / "outputs.npy")}}), "--overwrite"],
            ("outputs.npy", "aligned by row"))


@case("teacher-outputs-holding-nan")
def _(ws):
    train, _ = load_dataset("digits")
    outputs = np.zeros((len(train), 10), np.float32)
    outputs[5, 2] = np.nan
    np.save(ws.tmp / "outputs.npy", outputs)
    return (["distill", ws.run(distill={"teacher": {"outputs": str(ws.tmp / "outputs.npy")}}), "--overwrite"],
            ("outputs.npy", "5"))


@case("teacher-spec-of-two-kinds")
def _(ws):
    teacher = {"onnx": "teacher.onnx", "outputs": "outputs.npy"}
    return (["distill", ws.run(distill={"teacher": teacher}), "--overwrite"], ("exactly one of",))


@case("hostile-pickle-in-teacher-cache")
def _(ws):
    stem = ws.tmp / "cache" / "teacher-logits"
    stem.parent.mkdir()
    np.save(stem.with_suffix(".npy"), np.array([CreatesMarker(ws.marker)], dtype=object), allow_pickle=True)
    stem.with_suffix(".json").write_text(json.dumps({"format": "distillery-teacher-cache", "shape": [1]}))
    return (["distill", ws.distill(teacher_cache=str(stem)), "--overwrite"],
            (str(stem.with_suffix(".npy")), "unreadable"))


@case("hostile-pickle-in-npz-dataset")
def _(ws):
    directory = write_npz_dataset(ws.tmp / "evil-npz")
    np.savez(directory / "train.npz", x=np.array([CreatesMarker(ws.marker)], dtype=object), y=np.zeros(1))
    return (["train", ws.run(data={"dataset": "npz", "path": str(directory)}), "--overwrite"],
            (str(directory / "train.npz"),))


@case("hostile-pickle-as-npy-dataset")
def _(ws):
    directory = ws.tmp / "evil-npy"
    directory.mkdir()
    np.save(directory / "x_train.npy", np.array([CreatesMarker(ws.marker)] * 3, dtype=object), allow_pickle=True)
    return (["train", ws.run(data={"dataset": "npy", "path": str(directory)}), "--overwrite"],
            (str(directory / "x_train.npy"), "object array"))


@case("hostile-pickle-as-state-tensors")
def _(ws):
    run = ws.interrupted()
    tensors = run / "state" / json.loads((run / "state" / "state.json").read_text())["tensors"]
    ws.pickle_at(tensors)
    return ["train", "--resume", run], (str(tensors), "corrupted")


@case("hostile-pickle-as-state-json")
def _(ws):
    run = ws.interrupted()
    ws.pickle_at(run / "state" / "state.json")
    return ["train", "--resume", run], (str(run / "state" / "state.json"), "not valid JSON")


@case("truncated-teacher-safetensors")
def _(ws):
    teacher = ws.teacher_copy()
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    return ["distill", ws.run(distill={"teacher": str(teacher)}), "--overwrite"], (str(weights), "corrupted")


@case("truncated-state-tensors")
def _(ws):
    run = ws.interrupted()
    tensors = run / "state" / json.loads((run / "state" / "state.json").read_text())["tensors"]
    tensors.write_bytes(tensors.read_bytes()[: len(tensors.read_bytes()) // 2])
    return ["train", "--resume", run], (str(tensors), "corrupted")


@case("teacher-of-another-architecture")
def _(ws):
    teacher = ws.teacher_copy()
    metadata = json.loads((teacher / "model.json").read_text())
    metadata["architecture"] = {"name": "mlp", "hidden": [32]}  # the weights are of hidden [16]
    (teacher / "model.json").write_text(json.dumps(metadata))
    return (["distill", ws.run(distill={"teacher": str(teacher)}), "--overwrite"],
            (str(teacher), "do not fit", "size mismatch for features.0.0.weight"))


@case("state-of-another-architecture")
def _(ws):
    run = ws.interrupted()
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("name: step_model:make", "name: step_model:make\n  hidden: 8"))
    return ["train", "--resume", run], ("tensors-", "does not fit")


@case("teacher-cache-with-a-wrong-fingerprint")
def _(ws):
    stem = ws.tmp / "cache" / "teacher-logits"
    assert_ok(invoke("cache", ws.config(run_config(ws.tmp / "unused", distill={
        "teacher": str(ws.teacher), "teacher_cache": str(stem)}), "cache.yaml")))
    other = ws.teacher_copy("other-teacher")
    state = load_file(str(other / "model.safetensors"))
    save_file({name: value + 0.5 for name, value in state.items()}, str(other / "model.safetensors"))
    config = ws.run(distill={"teacher": str(other), "teacher_cache": str(stem)})
    return ["distill", config, "--overwrite"], (str(stem.with_suffix(".npy")), "different teacher weights")


# ---------------------------------------------------------------- what a file may not decide, what a run may not touch


def _teacher_naming(ws: Workspace, architecture: dict) -> Path:
    teacher = ws.teacher_copy()
    metadata = json.loads((teacher / "model.json").read_text())
    metadata["architecture"] = architecture
    (teacher / "model.json").write_text(json.dumps(metadata))
    return teacher


@case("teacher-checkpoint-names-a-factory")
def _(ws):
    # os:mkdir would create the marker (a directory): the tree hash proves it never ran.
    teacher = _teacher_naming(ws, {"name": "os:mkdir", "path": str(ws.marker)})
    return (["distill", ws.run(distill={"teacher": str(teacher)}), "--overwrite"],
            ("'os:mkdir'", "built-in", "--allow-factory os:mkdir"))


@case("evaluated-checkpoint-names-a-factory")
def _(ws):
    teacher = _teacher_naming(ws, {"name": "os:mkdir", "path": str(ws.marker)})
    return ["evaluate", teacher, "--no-latency"], ("'os:mkdir'", "allow_factories")


@case("teacher-with-nan-weights")
def _(ws):
    teacher = ws.teacher_copy()
    state = load_file(str(teacher / "model.safetensors"))
    save_file({name: torch.full_like(value, float("nan")) for name, value in state.items()},
              str(teacher / "model.safetensors"))
    return (["distill", ws.run(distill={"teacher": str(teacher), "teacher_cache": "off"}), "--overwrite"],
            ("teacher's outputs are NaN", "distillery evaluate"))


@case("alpha-without-labels")
def _(ws):
    config = ws.run(distill={"teacher": str(ws.teacher), "alpha": 0.5}, transfer={"labels": False})
    return ["distill", config, "--overwrite"], ("transfer.labels is false", "distill.alpha", "remove")


@case("alpha-one-leaves-the-teacher-no-weight")
def _(ws):
    return ["distill", ws.distill(alpha=1.0), "--overwrite"], ("alpha must be in [0, 1)", "distillery train")


@case("output-dir-empty")
def _(ws):
    return ["train", ws.config(run_config(""))], ("output_dir ''", "current folder")


@case("output-dir-holds-the-users-files")
def _(ws):
    folder = ws.tmp / "my-project"
    folder.mkdir()
    (folder / "config.yaml").write_text("my own notes\n")
    return ["train", ws.config(run_config(folder)), "--overwrite"], (str(folder), "not a distillery run's",
                                                                     "config.yaml")


@case("output-dir-cannot-be-written")
def _(ws):
    blocker = ws.tmp / "a-file"
    blocker.write_text("not a folder\n")
    return ["train", ws.config(run_config(blocker / "run"))], (str(blocker / "run"), "cannot write")


@case("config-is-a-directory")
def _(ws):
    return ["train", ws.tmp], (str(ws.tmp), "is a directory")


@case("config-is-not-utf8")
def _(ws):
    config = ws.tmp / "latin1.yaml"
    config.write_bytes(f"output_dir: {ws.existing}\nrole: caf\xe9\n".encode("latin-1"))
    return ["train", config], (str(config), "not UTF-8")


@case("config-the-yaml-reader-cannot-read")
def _(ws):
    config = ws.config("a: " + "[" * 20000 + "]" * 20000 + "\n")
    return ["train", config], (str(config), "cannot be read as YAML")


@case("config-with-two-documents")
def _(ws):
    config = ws.config(f"output_dir: {ws.existing}\n---\noutput_dir: {ws.existing}\n")
    return ["train", config, "--overwrite"], (str(config), "not valid YAML", "single document")


@case("user-factory-raises")
def _(ws):
    config = ws.run(model={"name": "raising_model:make"})
    return ["train", config, "--overwrite"], ("'raising_model:make'", "RuntimeError", "not mounted", "--debug")


@case("model-module-raises-while-imported")
def _(ws):
    config = ws.run(model={"name": "raising_import:make"})
    return ["train", config, "--overwrite"], ("importing 'raising_import'", "'raising_import:make'", "ValueError",
                                              "MODEL_ROOT", "--debug")


@case("model-module-whose-own-import-fails")
def _(ws):
    config = ws.run(model={"name": "broken_imports:make"})
    return ["train", config, "--overwrite"], ("importing 'broken_imports'", "ModuleNotFoundError",
                                              "distillery_test_no_such_package", "--debug")


@case("teacher-factory-module-raises-while-imported")
def _(ws):
    teacher = {"factory": "raising_import:make", "weights": str(ws.teacher / "model.safetensors")}
    return ["distill", ws.distill(teacher=teacher), "--overwrite"], ("importing 'raising_import'", "ValueError",
                                                                      "--debug")


@case("dataset-factory-module-raises-while-imported")
def _(ws):
    config = ws.run(data={"dataset": "python", "factory": "raising_import:make"})
    return ["train", config, "--overwrite"], ("importing 'raising_import'", "dataset factory", "ValueError")


@case("dataset-len-raises")
def _(ws):
    config = ws.run(data={"dataset": "python", "factory": "raising_model:datasets", "factory_options": {
        "failing": "len"}})
    return ["train", config, "--overwrite"], ("BrokenDataset.__len__()", "OSError", "index file", "--debug")


@case("dataset-getitem-raises")
def _(ws):
    config = ws.run(data={"dataset": "python", "factory": "raising_model:datasets"})
    return ["train", config, "--overwrite"], ("BrokenDataset.__getitem__(3)", "KeyError", "no image for row 3",
                                              "--debug")


@case("rgb-teacher-on-grey-images")
def _(ws):
    teacher = {"factory": "raising_model:make", "weights": str(ws.teacher / "model.safetensors"),
               "preprocessing": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}}
    return ["distill", ws.distill(teacher=teacher), "--overwrite"], (
        "teacher raising_model:make was trained on RGB images (3 channels)", "have 1", "data.channels: 3")


@case("state-json-that-is-not-a-state")
def _(ws):
    run = ws.interrupted()
    manifest = run / "state" / "state.json"
    document = json.loads(manifest.read_text())
    del document["payload"]["result"]
    manifest.write_text(json.dumps(document))
    return ["train", "--resume", run], (str(manifest), "not a complete training state", "payload.result")


# ---------------------------------------------------------------- resume mistakes


@case("resume-a-finished-run")
def _(ws):
    return ["train", "--resume", ws.existing], (str(ws.existing), "finished run", "nothing to resume")


@case("resume-without-saved-state")
def _(ws):
    run = ws.interrupted()
    shutil.rmtree(run / "state")
    return ["train", "--resume", run], (str(run), "no saved training state", "--overwrite")


@case("resume-a-path-that-is-not-a-run")
def _(ws):
    return ["train", "--resume", ws.tmp / "nowhere"], ("nowhere", "not a run directory")


@case("resume-with-a-config-too")
def _(ws):
    run = ws.interrupted()
    return ["train", ws.run(), "--resume", run], (f"--resume {run}", "drop the config file")


@case("resume-a-training-run-with-distill")
def _(ws):
    run = ws.interrupted()
    return ["distill", "--resume", run], ("no distill: section", "distillery train")


@case("resume-a-born-again-run")
def _(ws):
    run = ws.tmp / "born-again"
    run.mkdir()
    write_yaml(run / "config.yaml", run_config(run, distill={"teacher": str(ws.teacher), "generations": 2}))
    return ["distill", "--resume", run], ("born-again", "cannot be resumed", "--overwrite")


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(workspace, name):
    arguments, fragments = CASES[name](workspace)
    before = _tree_hashes(workspace.tmp, workspace.teacher)
    result = invoke(*arguments)
    assert_user_error(result, *fragments)
    assert not workspace.marker.exists(), "a hostile file's code ran"
    assert _tree_hashes(workspace.tmp, workspace.teacher) == before, "a file was changed, created or removed"


def test_a_case_name_cannot_be_registered_twice():
    name = sorted(CASES)[0]
    with pytest.raises(ValueError, match=f"{name!r} is registered twice"):
        case(name)(CASES[name])


def test_the_hostile_payload_is_live(tmp_path):
    """The control: unpickling the payload does run code, so the cases above prove a refusal, not a dud."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(CreatesMarker(marker)))
    assert marker.exists()
    evil = tmp_path / "evil.pt"
    torch.save(CreatesMarker(marker), evil)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


def test_the_code_base_never_unpickles():
    """No torch.load without weights_only=True, no pickle loads, no allow_pickle=True anywhere in the package."""
    offending = []
    for path in sorted((REPO / "distillery").rglob("*.py")):
        text = path.read_text()
        calls = text.count("torch.load(") - text.count("weights_only=True")
        if calls > 0 or "pickle.load" in text or "allow_pickle=True" in text:
            offending.append(str(path.relative_to(REPO)))
    assert offending == []
