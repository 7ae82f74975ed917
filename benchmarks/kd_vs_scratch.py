"""Teacher, student from scratch and distilled student on real Fashion-MNIST, over several seeds.

Runs `configs/fashion_mnist_teacher.yaml` once, then every student config in ARMS for each seed, through
the same code path as `distillery train/distill`. Finished runs are reused, so an interrupted benchmark
continues where it stopped. Writes bench-out/kd_vs_scratch.json and prints a Markdown table.

    python benchmarks/kd_vs_scratch.py [--seeds 0 1 2] [--out bench-out]
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

from distillery.config import load_config
from distillery.runs import run

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "configs/fashion_mnist_teacher.yaml"
ARMS = {
    "student from scratch": ROOT / "configs/fashion_mnist_scratch.yaml",
    "distilled student (Hinton KD)": ROOT / "configs/fashion_mnist_distill.yaml",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args()
    teacher = finished_run(TEACHER, args.out, "teacher", [])
    teacher_dir = args.out / "teacher"
    rows = {"teacher": {"accuracy": summarise([teacher["accuracy"]]), "parameters": teacher["parameters"],
                        "wall_time_s": teacher["wall_time_s"]}}
    for arm, config_path in ARMS.items():
        evaluations = []
        for seed in args.seeds:
            overrides = [f"seed={seed}", f"distill.teacher={teacher_dir}"] if "distill" in config_path.name else [
                f"seed={seed}"]
            name = f"{config_path.stem}-seed{seed}"
            evaluations.append(finished_run(config_path, args.out, name, overrides))
            print(f"{arm} seed {seed}: {evaluations[-1]['accuracy']:.2%}", flush=True)
        rows[arm] = {"accuracy": summarise([e["accuracy"] for e in evaluations]),
                     "parameters": evaluations[0]["parameters"],
                     "wall_time_s": statistics.median(e["wall_time_s"] for e in evaluations if e["wall_time_s"])}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "commit": commit.strip(), "seeds": args.seeds, "rows": rows}
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
