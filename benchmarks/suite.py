"""The benchmark suite on real Fashion-MNIST: every method on two students, a T x alpha heat map, speed.

For a teacher (trained from configs/fashion_mnist_teacher.yaml, or reused with --teacher) it runs, for
each student (a small MLP and a tiny CNN), the student from scratch and distilled by every method that
applies, over several seeds, through the same code path as `distillery train/distill`; then a
temperature x alpha sweep of Hinton KD on the MLP pair, the speed probes (benchmarks/speed.py) and the
reference tutorial loop (benchmarks/reference_loop.py). Finished runs are reused, so an interrupted suite
continues where it stopped. Writes <out>/suite.json, plots under docs/benchmarks/, and the section between
the suite markers of BENCHMARKS.md.

    python benchmarks/suite.py [--teacher runs/fashion_mnist/teacher] [--seeds 0 1 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from suite_report import write_section

from distillery.app.config.files import build_config, dump_config, load_config
from distillery.app.steps.evaluation import evaluate_checkpoint
from distillery.app.workflows.run import run
from distillery.eval.latency import measure_latency
from distillery.eval.noise import accuracy_difference
from distillery.models.checkpoint import load_model

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ROOT / "docs/benchmarks"
MARKERS = ("<!-- suite:start -->", "<!-- suite:end -->")

STUDENTS = {
    "MLP 128": {"model": {"name": "mlp", "hidden": [128]}, "kind": "mlp"},
    # 15,134 parameters: under 1/20 of the teacher's 322,474. Three stages give it the field of view that
    # two stages of 16-32 channels lacked (BENCHMARKS.md, "What moved the tiny CNN").
    "tiny CNN 12-24-48": {"model": {"name": "cnn", "channels": [12, 24, 48], "hidden": 32}, "kind": "cnn"},
}
# Feature layers: the teacher (cnn 32-64-128) gives 32x14x14 at features.0, 64x7x7 at features.1 and its
# 256-unit embedding at head; the tiny CNN gives 12x14x14 and 24x7x7, the MLP its 128 hidden units.
HINT_LAYERS = {"mlp": ("features.0", "head"), "cnn": ("features.1", "features.1")}
METHODS = {
    "from scratch": (None, {"mlp", "cnn"}),
    "Hinton KD (T 2, alpha 0.5)": ({"method": "hinton", "temperature": 2.0, "alpha": 0.5}, {"mlp", "cnn"}),
    "Hinton KD + logit standardisation (T 2, alpha 0.1)": (
        {"method": "hinton", "temperature": 2.0, "alpha": 0.1, "standardize": True}, {"mlp", "cnn"}),
    "logit matching (alpha 0.5)": ({"method": "logit_mse", "alpha": 0.5}, {"mlp", "cnn"}),
    "DKD (warm-up 5 epochs)": ({"method": "dkd", "warmup_epochs": 5}, {"mlp", "cnn"}),
    "DIST": ({"method": "dist"}, {"mlp", "cnn"}),
    "FitNets hint + KD": ({"method": "fitnet", "kd_weight": 0.5, "temperature": 2.0}, {"mlp", "cnn"}),
    "attention transfer + KD": ({"method": "attention", "student_layers": ["features.0", "features.1"],
                                 "teacher_layers": ["features.0", "features.1"], "kd_weight": 0.5,
                                 "temperature": 2.0}, {"cnn"}),
    # No outside teacher: models trained together, or the student teaching itself.
    "deep mutual learning (2 students, T 1)": ({"method": "mutual"}, {"mlp", "cnn"}),
    "online: teacher trained alongside (MLP 512-256)": (
        {"method": "online", "teacher_model": {"name": "mlp", "hidden": [512, 256]}, "temperature": 2.0}, {"mlp"}),
    "born-again, 2 generations (T 2, alpha 0.5)": (
        {"method": "hinton", "temperature": 2.0, "alpha": 0.5, "generations": 2}, {"mlp", "cnn"}),
    "deep supervision (head on features.0)": ({"method": "deep_supervision", "student_layers": ["features.0"]},
                                              {"cnn"}),
}
SELF_TAUGHT = ("mutual", "online", "deep_supervision")
PARTS = ("methods", "sweep", "speed", "reference")
SWEEP = {"temperature": [1.0, 2.0, 4.0, 8.0], "alpha": [0.0, 0.5, 0.9]}


QUICK_TEST_LIMIT = 2000


def quick_overrides(quick: bool) -> list[str]:
    return ["data.train_limit=4000", f"data.test_limit={QUICK_TEST_LIMIT}"] if quick else []


def finished_run(document: dict, run_dir: Path, overrides: list[str], collect: bool = False) -> dict | None:
    """Run once (reused when finished with the very same config), then its evaluation with wall time and epoch
    times; with ``collect``, None for a run not finished instead of training it."""
    config = build_config({**document, "output_dir": str(run_dir), "progress": False}, overrides)
    if not ((run_dir / "model.json").is_file() and same_config(run_dir / "config.yaml", config)):
        if collect:
            return None
        started = time.perf_counter()
        run(config, overwrite=True)
        (run_dir / "wall_time_s").write_text(f"{time.perf_counter() - started:.1f}")
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    evaluation["wall_time_s"] = float((run_dir / "wall_time_s").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation["epoch_time_s"] = statistics.median(record["epoch_time_s"] for record in records)
    return evaluation


def same_config(stored: Path, config) -> bool:
    """Whether a run's stored config asks for the same run; read through today's schema, so settings added
    since (at their defaults) do not count as a difference, nor does the directory's spelling."""
    try:
        return dump_config(_spelled_alike(load_config(stored), config.output_dir)) == \
            dump_config(_spelled_alike(config, config.output_dir))
    except Exception:  # noqa: BLE001 - a config today's schema cannot read is simply not the same
        return False


def _spelled_alike(config, output_dir):
    """The config with the given output_dir and its teacher paths absolute (the suite runs from the repository
    root), so spelling alone never differs."""
    if config.distill is not None and config.distill.teacher is not None:
        teachers = config.distill.teacher
        absolute = ([str((ROOT / t).resolve()) for t in teachers] if isinstance(teachers, list)
                    else str((ROOT / teachers).resolve()))
        config = config.model_copy(update={"distill": config.distill.model_copy(update={"teacher": absolute})})
    return config.model_copy(update={"output_dir": output_dir})


def student_document(student: dict, distill: dict | None, teacher_dir: Path, epochs: int) -> dict:
    base = load_config(ROOT / "configs/fashion_mnist_scratch.yaml").model_dump(mode="json")
    document = {**base, "model": student["model"], "train": {**base["train"], "epochs": epochs}}
    document.pop("output_dir")
    if distill is not None:
        distill = dict(distill)
        if distill["method"] == "fitnet":
            distill["student_layer"], distill["teacher_layer"] = HINT_LAYERS[student["kind"]]
        if distill["method"] == "mutual":
            distill["peers"] = [student["model"]]
        if distill["method"] not in SELF_TAUGHT and "generations" not in distill:
            distill["teacher"] = str(teacher_dir)
        document["distill"] = distill
        document["role"] = "distilled"
    return document


def chosen(only: list[str] | None, kind: str, method_name: str) -> bool:
    if not only:
        return True
    return any(kind == want.split(":", 1)[0] and method_name.startswith(want.split(":", 1)[1]) for want in only)


def summarise(evaluations: list[dict]) -> dict:
    accuracies = [e["accuracy"] for e in evaluations]
    first = evaluations[0]
    return {"accuracy": statistics.mean(accuracies), "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "values": accuracies, "samples": first["samples"], "parameters": first["parameters"],
            "size_bytes": first["size_bytes"],
            "batch1_ms": statistics.median(e["latency"]["batch1_median_ms"] for e in evaluations),
            "batch256_per_s": statistics.median(e["latency"]["batch256_samples_per_s"] for e in evaluations),
            "wall_time_s": statistics.median(e["wall_time_s"] for e in evaluations),
            "epoch_time_s": statistics.median(e["epoch_time_s"] for e in evaluations)}


def method_rows(args, teacher_dir: Path, teacher_accuracy: float) -> dict:
    rows: dict = {}
    for student_name, student in STUDENTS.items():
        epochs = args.epochs[student["kind"]]
        for method_name, (distill, kinds) in METHODS.items():
            if student["kind"] not in kinds or not chosen(args.only, student["kind"], method_name):
                continue
            evaluations = []
            for seed in args.seeds:
                slug = f"{student['kind']}-{method_name.split(' (')[0].replace(' ', '_').replace('+', 'and')}-s{seed}"
                document = student_document(student, distill, teacher_dir, epochs)
                evaluation = finished_run(document, args.out / slug, [f"seed={seed}", *args.slice], args.collect)
                if evaluation is not None:
                    evaluations.append(evaluation)
                    model_dir = args.out / slug
                    print(f"{student_name} | {method_name} | seed {seed}: {evaluation['accuracy']:.2%}", flush=True)
            if not evaluations:
                continue
            rows[f"{student_name} | {method_name}"] = {"student": student_name, "method": method_name,
                                                       "epochs": epochs, "model_dir": str(model_dir),
                                                       **summarise(evaluations)}
    for row in rows.values():
        scratch = rows.get(f"{row['student']} | from scratch", {}).get("accuracy")
        gap = teacher_accuracy - scratch if scratch is not None else 0.0
        row["gap_closed"] = (row["accuracy"] - scratch) / gap if gap > 0 else None
        if scratch is not None and row["method"] != "from scratch":
            # The seed means' difference with one run's 95% interval on this test set: noise, or not.
            difference = accuracy_difference(row["accuracy"], scratch, row["samples"])
            row["vs_scratch"] = {"points": 100 * difference.value, "low": 100 * difference.low,
                                 "high": 100 * difference.high, "within_noise": difference.within_noise}
    return rows


def measure_latency_again(rows: dict, rounds: int = 5) -> None:
    """Time every row's model (its last seed's) again in this one process, round-robin over the rows: the rows'
    latencies are then measured side by side, also for runs trained on shared cores or collected from earlier
    sessions. Each row keeps its best round (timeit's rule): on a shared virtual machine the same model's
    median moved between 0.23 and 0.65 ms from one second to the next, and interference only ever slows."""
    models = {key: load_model(row["model_dir"]) for key, row in rows.items()}
    samples: dict = {key: [] for key in rows}
    for _ in range(rounds):
        for key, (model, metadata) in models.items():
            samples[key].append(measure_latency(model, metadata["input_shape"], batch1_repeats=1000,
                                                throughput_repeats=30))
    for key, row in rows.items():
        row["batch1_ms"] = min(s["batch1_median_ms"] for s in samples[key])
        row["batch256_per_s"] = max(s["batch256_samples_per_s"] for s in samples[key])


def sweep(args, teacher_dir: Path) -> dict:
    student = STUDENTS["MLP 128"]
    grid = {}
    for temperature in args.sweep["temperature"]:
        for alpha in args.sweep["alpha"]:
            distill = {"method": "hinton", "temperature": temperature, "alpha": alpha}
            document = student_document(student, distill, teacher_dir, args.epochs["mlp"])
            evaluation = finished_run(document, args.out / f"sweep-T{temperature:g}-a{alpha:g}", ["seed=0", *args.slice],
                                      args.collect)
            if evaluation is None:
                return None  # a heat map with holes says less than none
            grid[f"{temperature:g},{alpha:g}"] = evaluation["accuracy"]
            print(f"sweep T {temperature:g} alpha {alpha:g}: {evaluation['accuracy']:.2%}", flush=True)
    return grid


def helper_script(name: str, arguments: list[str], collect: bool = False) -> dict | None:
    """Run benchmarks/<name>.py in its own process (its peak memory is its own) and read its JSON; with
    ``collect``, only read the JSON of an earlier run (None if there is none)."""
    out = arguments[arguments.index("--out") + 1]
    if collect:
        return json.loads(Path(out).read_text()) if Path(out).is_file() else None
    subprocess.run([sys.executable, str(ROOT / f"benchmarks/{name}.py"), *arguments], check=True)
    return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, help="a finished teacher run to reuse instead of training one")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out/suite")
    parser.add_argument("--quick", action="store_true", help="a slice of the data and short budgets (minutes)")
    parser.add_argument("--write", type=Path, help="the Markdown file to update (BENCHMARKS.md; "
                                                  "<out>/BENCHMARKS.md with --quick)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (all)")
    parser.add_argument("--only", nargs="+", metavar="KIND:METHOD",
                        help="run only these rows, e.g. cnn:attention (a kind, mlp or cnn, and a method name's start)")
    parser.add_argument("--collect", action="store_true",
                        help="train and time nothing: write the section from the runs and probes already finished")
    parser.add_argument("--epochs-mlp", type=int, default=40, help="the MLP student's budget, every row alike")
    parser.add_argument("--epochs-cnn", type=int, default=20, help="the tiny CNN's budget, every row alike")
    args = parser.parse_args()
    args.slice = quick_overrides(args.quick)
    args.epochs = {"mlp": 2, "cnn": 1} if args.quick else {"mlp": args.epochs_mlp, "cnn": args.epochs_cnn}
    args.sweep = {"temperature": [1.0, 4.0], "alpha": [0.0, 0.5]} if args.quick else SWEEP
    if args.quick:
        args.seeds = args.seeds[:1]
    args.write = args.write or (args.out / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    teacher_dir = args.teacher or args.out / "teacher"
    if args.teacher is None:
        teacher_overrides = [*args.slice, "train.epochs=1"] if args.quick else []
        document = load_config(ROOT / "configs/fashion_mnist_teacher.yaml").model_dump(mode="json")
        finished_run(document, teacher_dir, teacher_overrides)
    teacher = json.loads((teacher_dir / "evaluation.json").read_text())
    if args.quick and args.teacher is not None:
        # Students tested on a slice are compared with the teacher on the same slice.
        teacher = evaluate_checkpoint(teacher_dir, test_limit=QUICK_TEST_LIMIT, latency=True)

    rows = method_rows(args, teacher_dir, teacher["accuracy"]) if "methods" in args.parts else {}
    measure_latency_again(rows, rounds=1 if args.quick else 5)
    grid = sweep(args, teacher_dir) if "sweep" in args.parts else None
    quick = ["--quick"] if args.quick else []
    speed = helper_script("speed", ["--teacher", str(teacher_dir), "--out", str(args.out / "speed.json"), *quick],
                          args.collect) \
        if "speed" in args.parts else None
    reference = helper_script("reference_loop", ["--out", str(args.out / "reference.json"),
                                                 *(["--repeats", "1", "--train-limit", "4000"] if args.quick else [])],
                              args.collect) \
        if "reference" in args.parts else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {"machine": machine(), "commit": commit.strip(), "command": " ".join(["python", *sys.argv]),
              "quick": args.quick, "collected": args.collect, "seeds": args.seeds, "epochs": args.epochs, "teacher": teacher,
              "rows": rows, "sweep": grid, "speed": speed, "reference": reference,
              "suite_wall_time_s": time.perf_counter() - started}
    (args.out / "suite.json").write_text(json.dumps(result, indent=2))
    write_section(result, args.write, PLOTS if not args.quick else args.out / "plots", MARKERS)
    print(f"suite finished in {result['suite_wall_time_s'] / 60:.1f} min; wrote {args.write}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
