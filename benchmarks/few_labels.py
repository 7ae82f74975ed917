"""Few labels: a student from scratch on 1%, 5% and 10% of Fashion-MNIST's training labels, against the same
student distilled on the whole training set with the teacher's soft targets (labels only where kept).

The teacher learns from all labels. Both students keep the labels of the same seeded share of the training
images (`transfer.labeled_fraction`); the scratch student trains on those alone, at the better of two budgets by
validation accuracy (its own best, not a crippled baseline). Every difference is stated with its 95% interval.
Finished runs are reused.

    OMP_NUM_THREADS=2 python benchmarks/few_labels.py [--seeds 0 1 2] [--out bench-out/few-labels]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from distillery.app.config_file import build_config
from distillery.app.run import run
from distillery.eval.noise import accuracy_difference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_vs_scratch import provenance  # noqa: E402

DATA = {"dataset": "fashion-mnist", "val_fraction": 0.1}
TEACHER = {"role": "teacher", "data": {**DATA, "augment": {"shift": 2, "flip": True}},
           "model": {"name": "cnn", "channels": [32, 64, 128], "batch_norm": True, "dropout": 0.2, "hidden": 256},
           "train": {"epochs": 5, "batch_size": 128, "lr": 0.002}}
STUDENT = {"name": "mlp", "hidden": [128]}
FRACTIONS = (0.01, 0.05, 0.1)
SCRATCH_EPOCHS = (30, 100)  # on 540 to 5,400 images: 150 to 4,300 steps
DISTILL = {"train": {"epochs": 15, "batch_size": 128, "lr": 0.002},
           "distill": {"method": "hinton", "temperature": 4.0, "alpha": 0.5}}


def finished(document: dict, run_dir: Path) -> dict:
    if not (run_dir / "model.json").is_file():
        run(build_config({**document, "output_dir": str(run_dir), "progress": False, "measure_latency": False}),
            overwrite=True)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    evaluation["val"] = json.loads((run_dir / "model.json").read_text())["metrics"]["val/accuracy"]
    return evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-out/few-labels"))
    args = parser.parse_args()
    started = time.perf_counter()
    teacher = finished(TEACHER, args.out / "teacher")
    rows = []
    for fraction in FRACTIONS:
        transfer = {"transfer": {"labeled_fraction": fraction}}
        scratch, distilled = [], []
        for seed in args.seeds:
            budgets = [finished({"seed": seed, "data": DATA, "model": STUDENT, **transfer,
                                 "train": {"epochs": epochs, "batch_size": 128, "lr": 0.002}},
                                args.out / f"scratch-{fraction}-{epochs}-{seed}") for epochs in SCRATCH_EPOCHS]
            scratch.append(max(budgets, key=lambda evaluation: evaluation["val"]))
            distilled.append(finished({"seed": seed, "data": DATA, "model": STUDENT, **transfer, **DISTILL,
                                       "distill": {**DISTILL["distill"], "teacher": str(args.out / "teacher")}},
                                      args.out / f"distilled-{fraction}-{seed}"))
        rows.append(summary_row(fraction, scratch, distilled, teacher["accuracy"]))
    source = provenance()
    print(f"Machine: {source['machine']}. Commit `{source['commit']}`. Seeds {args.seeds}. Teacher "
          f"{teacher['accuracy']:.2%}. Wall time {time.perf_counter() - started:.0f} s.\n")
    print("| labels kept | student from scratch (best of 30/100 epochs) | distilled (15 epochs, T 4, alpha 0.5) | "
          "difference, seed 0 (95% interval) | share of the teacher–scratch gap closed |\n|---|---|---|---|---|")
    print("\n".join(rows))


def summary_row(fraction: float, scratch: list[dict], distilled: list[dict], teacher: float) -> str:
    def cell(evaluations: list[dict]) -> str:
        values = [evaluation["accuracy"] for evaluation in evaluations]
        spread = f" ± {statistics.stdev(values):.2%}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2%}{spread}"

    first = accuracy_difference(distilled[0]["accuracy"], scratch[0]["accuracy"], distilled[0]["samples"])
    scratch_mean = statistics.mean(evaluation["accuracy"] for evaluation in scratch)
    distilled_mean = statistics.mean(evaluation["accuracy"] for evaluation in distilled)
    closed = (distilled_mean - scratch_mean) / (teacher - scratch_mean)
    labels = round(fraction * 54000)
    return (f"| {fraction:.0%} ({labels:,} images) | {cell(scratch)} | {cell(distilled)} | {first.describe()} | "
            f"{closed:.0%} |")


if __name__ == "__main__":
    main()
