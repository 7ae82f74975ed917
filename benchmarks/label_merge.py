"""Two teachers that each know half of Fashion-MNIST's classes, one student over all ten (label-space merge).

Trains the CNN of configs/fashion_mnist_teacher.yaml (fewer epochs) on each half of the classes, then, for
every seed, the 128-unit MLP student of configs/fashion_mnist_scratch.yaml and fashion_mnist_distill.yaml (or the
tiny CNN 12-24-48, --student cnn) with one budget: (a) from scratch on all labels, (b) distilled from the merged
teachers with labels, (c) distilled from them without labels, (d) with --calibrate, distilled without labels from
the merge whose gate was fitted on a few labels per class (--arms picks among them). With --overlap, also a pair of
teachers whose class sets share two classes; with --even-odd, teachers on the even and the odd classes. Every run
goes through the same code path as `distillery train/distill`; finished runs are reused, so an interrupted
benchmark continues where it stopped. Writes <out>/label_merge.json (cnn-label_merge.json for --student cnn) and
prints a Markdown table.

    python benchmarks/label_merge.py [--seeds 0 1 2] [--teacher-epochs 8] [--student-epochs 40] [--overlap]
        [--even-odd] [--calibrate 10] [--student mlp|cnn] [--arms scratch labels unlabeled calibrated]
    python benchmarks/label_merge.py --quick     # digits, a few epochs: checks that the script works
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from few_labels import STUDENTS as SPECS
from kd_vs_scratch import ROOT, finished_run, provenance, summarise

from distillery.app.config.files import load_config
from distillery.app.steps.prepared_data import prepare_data
from distillery.app.steps.load_teachers import calibrate_merge
from distillery.data import ArrayDataset, BatchIterator, Normalizer
from distillery.eval.metrics import predict
from distillery.models.checkpoint import load_model
from distillery.teachers.from_config import combine_teachers, load_teachers

# dataset -> the teacher, scratch-student and distilled-student example configs the arms start from
SETUPS = {
    "fashion-mnist": ("fashion_mnist_teacher", "fashion_mnist_scratch", "fashion_mnist_distill"),
    "digits": ("digits_teacher", "digits_scratch", "digits_distill"),
}
NO_LATENCY = ["measure_latency=false"]
# --student: None keeps the student configs' own model (the 128-unit MLP)
STUDENTS = {"mlp": None, "cnn": SPECS["cnn"]}
ARMS = ("scratch", "labels", "unlabeled", "calibrated")


def splits(class_names: list[str], overlap: bool, even_odd: bool = False) -> dict[str, tuple[list[str], list[str]]]:
    """The teachers' class sets: the two halves; with ``overlap`` two sets sharing the middle two classes; with
    ``even_odd`` the classes of even and of odd label."""
    half = len(class_names) // 2
    chosen = {"disjoint": (class_names[:half], class_names[half:])}
    if overlap:
        chosen["overlapping"] = (class_names[:half + 1], class_names[half - 1:])
    if even_odd:
        chosen["even/odd"] = (class_names[0::2], class_names[1::2])
    return chosen


def scores(model: torch.nn.Module, preprocessing: dict | None, test: ArrayDataset, first_half: list[str]) -> dict:
    """Test accuracy over all classes and on the samples of each half (the disjoint split's)."""
    inputs = Normalizer.from_dict(preprocessing).apply(test) if preprocessing else test
    logits, labels = predict(model, BatchIterator(inputs, 512))
    correct = (logits.argmax(1) == labels).float()
    in_first = torch.isin(labels, torch.tensor([test.class_names.index(name) for name in first_half]))
    return {"all": correct.mean().item(), "first half": correct[in_first].mean().item(),
            "second half": correct[~in_first].mean().item()}


def slug(split: str) -> str:
    """A split's name as one directory name ("even/odd" -> "even-odd")."""
    return split.replace("/", "-")


def train_teachers(args, config: Path, split: str, class_sets: tuple[list[str], list[str]], rows: dict) -> list[Path]:
    """Both teachers of a split (seed 0), with a row each: accuracy on the test samples of its own classes."""
    directories = []
    for half, classes in enumerate(class_sets):
        name = f"teacher-{slug(split)}-{half}-e{args.teacher_epochs}"
        evaluation = finished_run(config, args.out, name, [f"data.classes={json.dumps(classes)}",
                                                           f"train.epochs={args.teacher_epochs}", *NO_LATENCY])
        rows[f"teacher on {', '.join(classes)} ({split})"] = {"own classes": evaluation["accuracy"]}
        directories.append(args.out / name)
    return directories


def student_arms(scratch: Path, distilled: Path, teachers: dict[str, list[Path]], calibrate: int | None,
                 kinds: list[str]) -> dict[str, tuple]:
    """Row name -> (run-name prefix, config, overrides) of every student arm of the kinds asked for."""
    arms = {"student from scratch, all labels": ("scratch", scratch, [])} if "scratch" in kinds else {}
    for split, directories in teachers.items():
        named = f"distill.teacher=[{', '.join(str(d) for d in directories)}]"
        if "labels" in kinds:
            arms[f"student distilled from the merged {split} teachers, with labels"] = (
                f"{slug(split)}-labels", distilled, [named])
        if "unlabeled" in kinds:
            arms[f"student distilled from the merged {split} teachers, without labels"] = (
                f"{slug(split)}-unlabeled", distilled, [named, "transfer.labels=false", "distill.alpha=null"])
        if calibrate and "calibrated" in kinds:
            arms[f"student distilled from the {split} teachers' merge calibrated on {calibrate} labels per class, "
                 "otherwise without labels"] = (f"{slug(split)}-calibrated{calibrate}", distilled,
                                                [named, "transfer.labels=false", "distill.alpha=null",
                                                 f"distill.calibrate_merge={calibrate}"])
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(SETUPS), default="fashion-mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, help="default: the student configs' own (40)")
    parser.add_argument("--overlap", action="store_true", help="also teachers on two overlapping class sets")
    parser.add_argument("--even-odd", action="store_true", help="also teachers on the even and the odd classes")
    parser.add_argument("--calibrate", type=int, help="also calibrate each merge on this many labels per class")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/label_merge")
    parser.add_argument("--student", choices=sorted(STUDENTS), default="mlp",
                        help="the student configs' MLP-128, or the tiny CNN 12-24-48 (Fashion-MNIST)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the student arms to run")
    parser.add_argument("--quick", action="store_true", help="digits, 2 teacher and 3 student epochs, seed 0")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.teacher_epochs, args.student_epochs, args.seeds = "digits", 2, 3, [0]
    teacher_config, scratch, distilled = (ROOT / "configs" / f"{name}.yaml" for name in SETUPS[args.dataset])
    test = prepare_data(load_config(scratch).data.model_copy(update={"normalize": False})).test
    class_sets = splits(test.class_names, args.overlap, args.even_odd)
    first_half = class_sets["disjoint"][0]
    rows: dict[str, dict] = {}
    teachers = {split: train_teachers(args, teacher_config, split, sets, rows) for split, sets in class_sets.items()}
    for split, directories in teachers.items():
        loaded = load_teachers([str(directory) for directory in directories])
        merged = combine_teachers(loaded, classes=test.class_names, weights=None, combine="logits", temperature=1.0)
        measured = scores(merged, loaded[0].metadata["preprocessing"], test, first_half)
        rows[f"merged {split} teachers (no training)"] = {key: summarise([value]) for key, value in measured.items()}
        if args.calibrate:
            data = prepare_data(load_config(scratch).data, loaded[0].metadata["preprocessing"])
            calibrate_merge(merged, data, args.calibrate, talk=False)
            measured = scores(merged, loaded[0].metadata["preprocessing"], test, first_half)
            rows[f"merged {split} teachers, gate calibrated on {args.calibrate} labels per class"] = {
                key: summarise([value]) for key, value in measured.items()}
    epochs = [f"train.epochs={args.student_epochs}"] if args.student_epochs else []
    student = [f"model={json.dumps(STUDENTS[args.student])}"] if STUDENTS[args.student] else []
    arms = student_arms(scratch, distilled, teachers, args.calibrate, args.arms)
    tag = "" if args.student == "mlp" else f"{args.student}-"  # the MLP's runs keep their first names
    for row, (prefix, config, overrides) in arms.items():
        per_seed = []
        for seed in args.seeds:
            name = f"{tag}{prefix}-e{args.student_epochs or 'default'}-seed{seed}"
            finished_run(config, args.out, name, [*overrides, *epochs, *student, *NO_LATENCY, f"seed={seed}"])
            model, metadata = load_model(args.out / name)
            per_seed.append(scores(model, metadata["preprocessing"], test, first_half))
            print(f"{row}, seed {seed}: {per_seed[-1]['all']:.2%}", flush=True)
        rows[row] = {key: summarise([s[key] for s in per_seed]) for key in per_seed[0]}
    halves = [", ".join(first_half), ", ".join(class_sets["disjoint"][1])]
    result = {**provenance(), "dataset": args.dataset, "seeds": args.seeds, "teacher_epochs": args.teacher_epochs,
              "student": args.student, "student_epochs": args.student_epochs, "halves": halves, "rows": rows}
    (args.out / f"{tag}label_merge.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


def spread(summary: dict) -> str:
    if len(summary["values"]) == 1:
        return f"{summary['mean']:.2%}"
    return f"{summary['mean']:.2%} ± {summary['std']:.2%}"


def markdown(result: dict) -> str:
    first, second = result["halves"]
    lines = [f"| model | test accuracy, all classes (mean ± std) | on {first} | on {second} |", "|---|---|---|---|"]
    for name, row in result["rows"].items():
        if "own classes" in row:
            lines.append(f"| {name} | {row['own classes']:.2%} on its own classes | – | – |")
            continue
        cells = [spread(row[key]) for key in ("all", "first half", "second half")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
