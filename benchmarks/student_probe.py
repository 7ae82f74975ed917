"""One student architecture against a few distillation variants on Fashion-MNIST, one run each.

What the tiny-CNN rows of BENCHMARKS.md ("What moved the tiny CNN") came from. Every run is the suite's own
student document (benchmarks/suite.py) with the variant's distill and data settings applied; finished runs
are reused, so an interrupted probe continues.

    python benchmarks/student_probe.py --model '{"name": "cnn", "channels": [12, 24, 48], "hidden": 32}' \
        --epochs 20 --seed 0 scratch hinton-T2-a0.5 dist
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from suite import ROOT, finished_run, student_document

AUGMENT = {"shift": 2, "flip": True}
VARIANTS = {
    "scratch": (None, {}),
    "scratch-augmented": (None, {"augment": AUGMENT}),
    "hinton-T1-a0.5": ({"method": "hinton", "temperature": 1.0, "alpha": 0.5}, {}),
    "hinton-T2-a0.5": ({"method": "hinton", "temperature": 2.0, "alpha": 0.5}, {}),
    "hinton-T4-a0.5": ({"method": "hinton", "temperature": 4.0, "alpha": 0.5}, {}),
    "hinton-T4-a0.1": ({"method": "hinton", "temperature": 4.0, "alpha": 0.1}, {}),
    "hinton-T2-a0.5-views4": ({"method": "hinton", "temperature": 2.0, "alpha": 0.5, "teacher_views": 4},
                              {"augment": AUGMENT}),
    "dist": ({"method": "dist"}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--model", type=json.loads, required=True, help="the student's model section, as JSON")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, default=ROOT / "runs/fashion_mnist/teacher")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/student-probe")
    args = parser.parse_args()
    tag = "-".join(str(value) for value in [args.model["name"], *args.model.get("channels", args.model.get("hidden", []))])
    for name in args.variants:
        distill, data = VARIANTS[name]
        document = student_document({"model": args.model}, distill, args.teacher, args.epochs)
        document["data"] = {**document["data"], **data}
        run_dir = args.out / f"{tag}-{name}-e{args.epochs}-s{args.seed}"
        evaluation = finished_run(document, run_dir, [f"seed={args.seed}"])
        print(f"{tag} {name}, {args.epochs} epochs, seed {args.seed}: {evaluation['accuracy']:.2%} test accuracy",
              flush=True)


if __name__ == "__main__":
    main()
