"""Temperature x alpha (and other losses) for one teacher/student pair on real Fashion-MNIST.

Loads a finished teacher run, prepares the data and the teacher's logits once, then trains the student
for every setting of the grid through the same method and training code as `distillery distill`
(no augmentation, so the precomputed logits are exactly what the live teacher would give).

    python benchmarks/fashion_mnist_sweep.py --teacher runs/fashion_mnist/teacher [--epochs 15] [--seeds 0]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from distillery.app.config import DataConfig
from distillery.app.steps.prepared_data import prepare_data
from distillery.app.steps.evaluation import evaluate
from distillery.app.steps.fit import fit_method
from distillery.data import BatchIterator
from distillery.methods import create_method
from distillery.models import build_model
from distillery.teachers import load_teacher
from distillery.teachers.precomputed import precompute_logits

STUDENT = {"name": "mlp", "hidden": [128]}
GRID = (
    [("supervised", {})]
    + [("hinton", {"temperature": t, "alpha": a}) for t in (1.0, 2.0, 4.0, 8.0, 20.0) for a in (0.0, 0.5, 0.9)]
    + [("logit_mse", {"alpha": 0.5}), ("dist", {}), ("dkd", {"warmup_epochs": 5}),
       ("hinton", {"temperature": 2.0, "alpha": 0.1, "standardize": True})]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    teacher, metadata = load_teacher(args.teacher)
    data = prepare_data(DataConfig(dataset="fashion-mnist", val_fraction=0.1), metadata["preprocessing"])
    logits = precompute_logits(teacher, BatchIterator(data.train, 512, transform=data.normalizer), len(data.train))
    print(f"| method | options | test accuracy ({args.epochs} epochs, seeds {args.seeds}) | wall time |")
    print("|---|---|---|---|")
    for method_name, options in GRID:
        started = time.perf_counter()
        accuracies = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            student = build_model(STUDENT, data.train.input_shape, data.train.num_classes)
            method = create_method(method_name, student, None if method_name == "supervised" else teacher, **options)
            if method_name != "supervised":
                method.use_precomputed_teacher_logits(logits)
            batches = BatchIterator(data.train, 128, shuffle=True, seed=seed, transform=data.normalizer)
            result = fit_method(method, batches, BatchIterator(data.val, 512), epochs=args.epochs, lr=0.002,
                                weight_decay=5e-4, seed=seed, progress=False)
            accuracies.append(evaluate(result.model, BatchIterator(data.test, 512))["accuracy"])
        shown = ", ".join(f"{key}={value}" for key, value in options.items()) or "–"
        print(f"| {method_name} | {shown} | {statistics.mean(accuracies):.2%} | "
              f"{time.perf_counter() - started:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
