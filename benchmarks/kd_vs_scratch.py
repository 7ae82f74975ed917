"""Teacher, student from scratch and distilled student on real Fashion-MNIST, over several seeds.

Runs `configs/fashion_mnist_teacher.yaml` once, then every student config in ARMS for each seed, through
the same code path as `distillery train/distill`. Finished runs are reused, so an interrupted benchmark
continues where it stopped. Writes bench-out/kd_vs_scratch.json and prints a Markdown table.

    python benchmarks/kd_vs_scratch.py [--seeds 0 1 2] [--out bench-out] [--teacher runs/fashion_mnist/teacher]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from distillery.app.config.files import load_config
from distillery.app.workflows.run import run

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "configs/fashion_mnist_teacher.yaml"
# name -> (config, overrides). Scratch is also run at 15 epochs, the budget where it does best on its own,
# so the distilled student is compared with the scratch student's best and not only with an overfit one.
ARMS = {
    "student from scratch, 15 epochs": (ROOT / "configs/fashion_mnist_scratch.yaml", ["train.epochs=15"]),
    "student from scratch, 40 epochs": (ROOT / "configs/fashion_mnist_scratch.yaml", []),
    "distilled student, 40 epochs (Hinton KD, T=2, alpha=0.5)": (ROOT / "configs/fashion_mnist_distill.yaml", []),
}


def finished_run(config_path: Path, out: Path, name: str, overrides: list[str]) -> dict:
    run_dir = out / name
    if not (run_dir / "model.json").is_file():
        started = time.perf_counter()
        run(load_config(config_path, [f"output_dir={run_dir}", "progress=false", *overrides]), overwrite=True)
        (run_dir / "wall_time_s").write_text(f"{time.perf_counter() - started:.1f}")
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    wall = run_dir / "wall_time_s"
    evaluation["wall_time_s"] = float(wall.read_text()) if wall.is_file() else None
    return evaluation


def summarise(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def provenance() -> dict:
    """The machine and the commit a result was measured with."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "commit": commit.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--teacher", type=Path, help="a finished teacher run to reuse instead of training one")
    args = parser.parse_args()
    if args.teacher is not None:
        teacher_dir = args.teacher
        teacher = json.loads((teacher_dir / "evaluation.json").read_text())
        teacher["wall_time_s"] = sum(json.loads(line)["epoch_time_s"]
                                     for line in (teacher_dir / "metrics.jsonl").read_text().splitlines())
    else:
        teacher = finished_run(TEACHER, args.out, "teacher", [])
        teacher_dir = args.out / "teacher"
    rows = {"teacher": {"accuracy": summarise([teacher["accuracy"]]), "parameters": teacher["parameters"],
                        "wall_time_s": teacher["wall_time_s"]}}
    for index, (arm, (config_path, arm_overrides)) in enumerate(ARMS.items()):
        evaluations = []
        for seed in args.seeds:
            overrides = [*arm_overrides, f"seed={seed}"]
            if load_config(config_path).distill is not None:
                overrides.append(f"distill.teacher={teacher_dir}")
            evaluations.append(finished_run(config_path, args.out, f"arm{index}-seed{seed}", overrides))
            print(f"{arm} seed {seed}: {evaluations[-1]['accuracy']:.2%}", flush=True)
        rows[arm] = {"accuracy": summarise([e["accuracy"] for e in evaluations]),
                     "parameters": evaluations[0]["parameters"],
                     "wall_time_s": statistics.median(e["wall_time_s"] for e in evaluations if e["wall_time_s"])}
    result = {**provenance(), "seeds": args.seeds, "rows": rows}
    (args.out / "kd_vs_scratch.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["| model | test accuracy (mean ± std) | per seed | parameters | median wall time |",
             "|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        accuracy = row["accuracy"]
        seeds = ", ".join(f"{v:.2%}" for v in accuracy["values"])
        wall = f"{row['wall_time_s']:.0f} s" if row.get("wall_time_s") else "–"
        lines.append(f"| {name} | {accuracy['mean']:.2%} ± {accuracy['std']:.2%} | {seeds} | "
                     f"{row['parameters']:,} | {wall} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
