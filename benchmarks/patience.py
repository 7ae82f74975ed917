"""Patience: the share of the teacher–scratch gap closed against the schedule's length, for function matching
(identical augmented, mixed views; teacher live) and plain Hinton KD (fixed views; teacher cached).

Fashion-MNIST, a seeded slice of the training images (--train-limit), the MLP-128 or the tiny CNN 12-24-48 student
(--student), the teacher of benchmarks/few_labels.py (trained on all labels; its run is reused). Runs are kept under
--out/<student>-seed<seed> and reused (give another --teacher its own --out). The scratch reference is the student
at its own best budget and its own best augmentation (all of them run, the best by validation accuracy).

    OMP_NUM_THREADS=2 python benchmarks/patience.py [--epochs 20 60] [--train-limit 10000] [--seeds 0 1 2] [--views 1 4]
        [--student mlp|cnn] [--no-live]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_labels import DATA, STUDENTS, TEACHER, finished  # noqa: E402
from kd_vs_scratch import provenance  # noqa: E402

from distillery.eval.noise import accuracy_difference  # noqa: E402

AUGMENT = {"shift": 2, "flip": True}


def budget(epochs: int) -> dict:
    return {"train": {"epochs": epochs, "batch_size": 128, "lr": 0.002}}


def arms(args, data: dict) -> dict[str, tuple[dict, dict]]:
    """Each distilled arm by name: its data section and its distill section (the teacher added later)."""
    return {
        "Hinton KD (T 4, alpha 0.5), fixed views, teacher cached": (
            {**data}, {"method": "hinton", "temperature": 4.0, "alpha": 0.5}),
        **({} if args.no_live else {"function matching (T 1, mixup, shift 2 + flip), teacher live": (
            {**data, "augment": AUGMENT}, {"method": "function_matching", "temperature": 1.0, "mix": "mixup"})}),
        **{f"function matching, {views} cached view{'s' if views > 1 else ''} (augmentation, partner, weight)": (
            {**data, "augment": AUGMENT}, {"method": "function_matching", "temperature": 1.0, "mix": "mixup",
                                           "teacher_views": views}) for views in args.views},
    }


def one_seed(args, seed: int, teacher: float) -> tuple[str, dict[tuple[str, int], tuple[float, float]]]:
    """The runs of one seed (reused when finished): its header line and table, and each arm's test accuracy and
    share of the gap closed by (arm, epochs)."""
    data = {**DATA, "train_limit": args.train_limit}
    base = {"seed": seed, "model": STUDENTS[args.student]}
    root = args.out / f"{args.student}-seed{seed}"
    scratch = {(epochs, augmented): finished({**base, **budget(epochs),
                                              "data": {**data, "augment": AUGMENT if augmented else {}}},
                                             root / f"scratch-{epochs}-{'aug' if augmented else 'plain'}")
               for epochs in args.epochs for augmented in (False, True)}
    reference = max(scratch.values(), key=lambda evaluation: evaluation["val"])
    rows, results = [], {}
    for epochs in args.epochs:
        for name, (arm_data, distill) in arms(args, data).items():
            evaluation = finished({**base, **budget(epochs), "data": arm_data,
                                   "distill": {**distill, "teacher": str(args.teacher)}},
                                  root / (f"{distill['method']}-{epochs}"
                                          + (f"-views{distill['teacher_views']}" if "teacher_views" in distill
                                             else "")))
            closed = (evaluation["accuracy"] - reference["accuracy"]) / (teacher - reference["accuracy"])
            difference = accuracy_difference(evaluation["accuracy"], reference["accuracy"], evaluation["samples"])
            rows.append(f"| {name} | {epochs} | {evaluation['accuracy']:.2%} | {difference.describe()} | {closed:.0%} |")
            results[(name, epochs)] = (evaluation["accuracy"], closed)
    results[("scratch reference", 0)] = (reference["accuracy"], 0.0)
    scratch_cells = ", ".join(f"{epochs} epochs {'augmented' if augmented else 'plain'} {value['accuracy']:.2%}"
                              for (epochs, augmented), value in scratch.items())
    table = (f"Seed {seed}. Scratch student, each budget: {scratch_cells}; the reference (best by validation) "
             f"{reference['accuracy']:.2%}.\n\n"
             "| method | epochs | test accuracy | against the best scratch student (95% interval) | gap closed |\n"
             "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return table, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/patience"))
    parser.add_argument("--teacher", type=Path, default=Path("bench-out/few-labels/teacher"))
    parser.add_argument("--views", type=int, nargs="*", default=[],
                        help="also function matching on K cached mixed views (teacher run once per view), each K")
    parser.add_argument("--student", choices=sorted(STUDENTS), default="mlp")
    parser.add_argument("--no-live", action="store_true", help="leave out function matching with the live teacher")
    args = parser.parse_args()
    started = time.perf_counter()
    teacher = finished(TEACHER, args.teacher)["accuracy"]
    tables, results = zip(*(one_seed(args, seed, teacher) for seed in args.seeds))
    source = provenance()
    sizes = [json.loads((run / "model.json").read_text())["parameters"]
             for run in (args.teacher, args.out / f"{args.student}-seed{args.seeds[0]}" / f"hinton-{args.epochs[0]}")]
    print(f"Machine: {source['machine']}. Commit `{source['commit']}`. Student {args.student} "
          f"({STUDENTS[args.student]}, {sizes[1]:,} parameters, 1/{sizes[0] / sizes[1]:.1f} of the teacher's "
          f"{sizes[0]:,}), {args.train_limit:,} training images, teacher {teacher:.2%}. Wall time "
          f"{time.perf_counter() - started:.0f} s.\n")
    print("\n".join(tables))
    if len(args.seeds) > 1:
        print(f"Over seeds {', '.join(map(str, args.seeds))} (mean ± standard deviation; each seed's gap against its "
              "own scratch reference):\n\n| method | epochs | test accuracy | gap closed |\n|---|---|---|---|")
        for key in results[0]:
            accuracies = [result[key][0] for result in results]
            closed = [result[key][1] for result in results]
            name, epochs = key
            print(f"| {name} | {epochs or '(best budget)'} | {statistics.mean(accuracies):.2%} ± "
                  f"{statistics.stdev(accuracies):.2%} | {statistics.mean(closed):.0%} ± {statistics.stdev(closed):.0%} |")


if __name__ == "__main__":
    main()
