"""Distillation end to end on a slice of real Fashion-MNIST, through the config-driven runs."""
import json

import pytest
from safetensors.torch import load_file

from distillery.app.config.files import build_config
from distillery.app.workflows.run import run

SLICE = {"dataset": "fashion-mnist", "train_limit": 3000, "test_limit": 1000, "val_fraction": 0.1}


@pytest.mark.slow
def test_fashion_mnist_slice_teacher_then_distilled_student(fashion_mnist_dir, tmp_path):
    common = {"data": {**SLICE, "path": str(fashion_mnist_dir)}, "progress": False, "measure_latency": False}
    teacher_config = build_config({**common, "output_dir": str(tmp_path / "teacher"), "role": "teacher",
                                   "model": {"name": "mlp", "hidden": [256, 128]},
                                   "train": {"epochs": 5, "lr": 0.002, "batch_size": 64}})
    teacher_dir = run(teacher_config)
    student_config = build_config({**common, "output_dir": str(tmp_path / "student"),
                                   "model": {"name": "mlp", "hidden": [32]},
                                   "train": {"epochs": 3, "lr": 0.003, "batch_size": 64},
                                   "distill": {"teacher": str(teacher_dir), "temperature": 4.0, "alpha": 0.3}})
    student_dir = run(student_config)
    teacher_eval = json.loads((teacher_dir / "evaluation.json").read_text())
    student_eval = json.loads((student_dir / "evaluation.json").read_text())
    assert teacher_eval["samples"] == student_eval["samples"] == 1000
    # Real clothing images: far above the 10% of chance after a few hundred steps.
    assert teacher_eval["accuracy"] > 0.7
    assert student_eval["accuracy"] > 0.7
    assert student_eval["agreement"] > 0.75
    student_meta = json.loads((student_dir / "model.json").read_text())
    teacher_meta = json.loads((teacher_dir / "model.json").read_text())
    assert student_meta["preprocessing"] == teacher_meta["preprocessing"]  # one normalisation for both
    assert student_meta["class_names"][0] == "T-shirt/top"
    # The saved student is the student alone: no teacher tensors in it.
    saved = load_file(str(student_dir / "model.safetensors"))
    assert sum(tensor.numel() for tensor in saved.values()) == student_meta["parameters"] == 28 * 28 * 32 + 32 + 330
