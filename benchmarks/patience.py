"""Patience: the share of the teacher–scratch gap closed against the schedule's length, for function matching
(identical augmented, mixed views; teacher live) and plain Hinton KD (fixed views; teacher cached).

Fashion-MNIST, a seeded slice of the training images (--train-limit), the MLP-128 or the tiny CNN 12-24-48 student
(--student), the teacher of benchmarks/few_labels.py (trained on all labels; its run is reused). Runs are kept under
--out/<student>-seed<seed> and reused. The scratch reference is the student at
its own best budget and its own best augmentation (all of them run, the best by validation accuracy).

    OMP_NUM_THREADS=2 python benchmarks/patience.py [--epochs 20 60] [--train-limit 10000] [--seed 0] [--views 1 4]
        [--student mlp|cnn] [--no-live]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_labels import DATA, STUDENT, TEACHER, finished  # noqa: E402
from kd_vs_scratch import provenance  # noqa: E402

from distillery.eval.noise import accuracy_difference  # noqa: E402

AUGMENT = {"shift": 2, "flip": True}
STUDENTS = {"mlp": STUDENT, "cnn": {"name": "cnn", "channels": [12, 24, 48], "hidden": 32}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/patience"))
    parser.add_argument("--teacher", type=Path, default=Path("bench-out/few-labels/teacher"))
    parser.add_argument("--views", type=int, nargs="*", default=[],
                        help="also function matching on K cached mixed views (teacher run once per view), each K")
    parser.add_argument("--student", choices=sorted(STUDENTS), default="mlp")
    parser.add_argument("--no-live", action="store_true", help="leave out function matching with the live teacher")
    args = parser.parse_args()
    started = time.perf_counter()
    teacher = finished(TEACHER, args.teacher)["accuracy"]
    data = {**DATA, "train_limit": args.train_limit}
    base = {"seed": args.seed, "model": STUDENTS[args.student]}
    root = args.out / f"{args.student}-seed{args.seed}"

    def budget(epochs: int) -> dict:
        return {"train": {"epochs": epochs, "batch_size": 128, "lr": 0.002}}

    scratch = {(epochs, augmented): finished({**base, **budget(epochs),
                                              "data": {**data, "augment": AUGMENT if augmented else {}}},
                                             root / f"scratch-{epochs}-{'aug' if augmented else 'plain'}")
               for epochs in args.epochs for augmented in (False, True)}
    reference = max(scratch.values(), key=lambda evaluation: evaluation["val"])
    rows = []
    for epochs in args.epochs:
        arms = {
            "Hinton KD (T 4, alpha 0.5), fixed views, teacher cached": (
                {**data}, {"method": "hinton", "temperature": 4.0, "alpha": 0.5}),
            **({} if args.no_live else {"function matching (T 1, mixup, shift 2 + flip), teacher live": (
                {**data, "augment": AUGMENT}, {"method": "function_matching", "temperature": 1.0, "mix": "mixup"})}),
            **{f"function matching, {views} cached view{'s' if views > 1 else ''} (augmentation, partner, weight)": (
                {**data, "augment": AUGMENT}, {"method": "function_matching", "temperature": 1.0, "mix": "mixup",
                                               "teacher_views": views}) for views in args.views},
        }
        for name, (arm_data, distill) in arms.items():
            evaluation = finished({**base, **budget(epochs), "data": arm_data,
                                   "distill": {**distill, "teacher": str(args.teacher)}},
                                  root / (f"{distill['method']}-{epochs}"
                                          + (f"-views{distill['teacher_views']}" if "teacher_views" in distill
                                             else "")))
            closed = (evaluation["accuracy"] - reference["accuracy"]) / (teacher - reference["accuracy"])
            difference = accuracy_difference(evaluation["accuracy"], reference["accuracy"], evaluation["samples"])
            rows.append(f"| {name} | {epochs} | {evaluation['accuracy']:.2%} | {difference.describe()} | {closed:.0%} |")
    source = provenance()
    scratch_cells = ", ".join(f"{epochs} epochs {'augmented' if augmented else 'plain'} {value['accuracy']:.2%}"
                              for (epochs, augmented), value in scratch.items())
    print(f"Machine: {source['machine']}. Commit `{source['commit']}`. Student {args.student} "
          f"({STUDENTS[args.student]}), seed {args.seed}, {args.train_limit:,} "
          f"training images. Teacher {teacher:.2%}. Scratch student, each budget: {scratch_cells}; the reference "
          f"(best by validation) {reference['accuracy']:.2%}. Wall time {time.perf_counter() - started:.0f} s.\n")
    print("| method | epochs | test accuracy | against the best scratch student (95% interval) | gap closed |\n"
          "|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
