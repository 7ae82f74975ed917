"""The distillation loop most users write first, against the same distillation through distillery.

The reference is the classic tutorial recipe, in plain PyTorch: a per-sample Dataset (each image turned
into a tensor and normalised in ``__getitem__``) behind a DataLoader with batch 64, an MLP teacher
512-256 trained for 5 epochs, then a 128-unit student trained for 5 epochs with the teacher run on
every batch, T=3, alpha=0.5 (KL at T times T², plus cross-entropy at T=1). distillery then distils the
same student from the same teacher on the same data, budget and batch size; given the data as an
ArrayDataset, it runs the teacher once over the training set and reads its logits by sample index, and
that teacher pass is inside its timed phase. Both report the student's test accuracy and the wall time
of the distillation phase (median of --repeats runs, side by side).

    python benchmarks/reference_loop.py [--repeats 3] [--train-limit N] [--out bench-out/reference.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distillery.app.workflows.api import distill
from distillery.app.config import DataConfig
from distillery.app.steps.prepared_data import prepare_data
from distillery.app.steps.evaluation import evaluate
from distillery.data import ArrayDataset, BatchIterator

EPOCHS, BATCH, TEMPERATURE, ALPHA, LR = 5, 64, 3.0, 0.5, 1e-3


class PerSampleImages(Dataset):
    """What a tutorial's torchvision ToTensor + Normalize does: one uint8 image at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).float().div(255.0).unsqueeze(0)
        return (image - self.mean) / self.std, int(self.labels[index])


def mlp(hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, 10))


def train_teacher(teacher: nn.Module, loader: DataLoader) -> None:
    optimizer = torch.optim.Adam(teacher.parameters(), lr=LR)
    teacher.train()
    for _ in range(EPOCHS):
        for inputs, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(teacher(inputs), labels).backward()
            optimizer.step()


def reference_distillation(teacher: nn.Module, student: nn.Module, loader: DataLoader) -> None:
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    teacher.eval()
    student.train()
    for _ in range(EPOCHS):
        for inputs, labels in loader:
            optimizer.zero_grad()
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            student_logits = student(inputs)
            soft = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, dim=-1),
                            F.softmax(teacher_logits / TEMPERATURE, dim=-1), reduction="batchmean")
            loss = (1 - ALPHA) * soft * TEMPERATURE**2 + ALPHA * F.cross_entropy(student_logits, labels)
            loss.backward()
            optimizer.step()


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=None, help="use only N training images (a quick check)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (the tutorial's 2)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/reference.json"))
    args = parser.parse_args()

    # One split and one normalisation for both sides: the training split of distillery's own preparation.
    data = prepare_data(DataConfig(dataset="fashion-mnist", val_fraction=0.1, train_limit=args.train_limit))
    mean, std = data.normalizer.mean[0], data.normalizer.std[0]
    images = (data.train.inputs.squeeze(1) * 255).round().to(torch.uint8).numpy()
    per_sample = PerSampleImages(images, data.train.labels.numpy(), mean, std)
    loader = DataLoader(per_sample, batch_size=BATCH, shuffle=True, num_workers=args.workers)
    train_set = ArrayDataset(data.normalizer(data.train.inputs), data.train.labels, data.train.class_names)
    test_batches = BatchIterator(data.test, 512)

    torch.manual_seed(0)
    teacher = mlp([512, 256])
    teacher_time = timed(train_teacher, teacher, loader)
    teacher_accuracy = evaluate(teacher, test_batches)["accuracy"]
    print(f"teacher MLP 512-256: {teacher_accuracy:.2%} in {teacher_time:.0f} s", flush=True)

    rows = {"reference": [], "distillery": []}
    for repeat in range(args.repeats):
        torch.manual_seed(repeat)
        student = mlp([128])
        seconds = timed(reference_distillation, teacher, student, loader)
        rows["reference"].append({"seconds": seconds, "accuracy": evaluate(student, test_batches)["accuracy"]})
        torch.manual_seed(repeat)
        started = time.perf_counter()
        result = distill(teacher, mlp([128]), train_set, method="hinton", temperature=TEMPERATURE, alpha=ALPHA,
                         epochs=EPOCHS, batch_size=BATCH, lr=LR, schedule="constant", weight_decay=0.0,
                         seed=repeat, progress=False)
        seconds = time.perf_counter() - started
        rows["distillery"].append({"seconds": seconds, "accuracy": evaluate(result.model, test_batches)["accuracy"]})
        print(f"repeat {repeat}: reference {rows['reference'][-1]}, distillery {rows['distillery'][-1]}", flush=True)

    summary = {name: {"median_seconds": statistics.median(r["seconds"] for r in runs),
                      "accuracy_mean": statistics.mean(r["accuracy"] for r in runs),
                      "accuracy_std": statistics.stdev([r["accuracy"] for r in runs]) if len(runs) > 1 else 0.0,
                      "runs": runs} for name, runs in rows.items()}
    speedup = summary["reference"]["median_seconds"] / summary["distillery"]["median_seconds"]
    result = {"teacher": {"accuracy": teacher_accuracy, "seconds": teacher_time}, "speedup": speedup,
              "train_samples": len(data.train), **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"distillation phase, median of {args.repeats}: reference {summary['reference']['median_seconds']:.1f} s, "
          f"distillery {summary['distillery']['median_seconds']:.1f} s ({speedup:.1f}x faster); student accuracy "
          f"{summary['reference']['accuracy_mean']:.2%} vs {summary['distillery']['accuracy_mean']:.2%}")


if __name__ == "__main__":
    main()
