"""King James verses by part of the Bible: a 4-block transformer classifier teacher, and a 1-block student trained
on the labels alone and distilled (hinton, dkd, hinton with hidden-state matching), every fifth chapter held out for testing.

Data and tokenizer from examples/make_kjv_parts.py (`make lm-data` installs Debian's bible-kjv); every run is the
configs/kjv_parts_*.yaml config with its output directory under --out.

    OMP_NUM_THREADS=2 python benchmarks/text_classes.py
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_vs_scratch import provenance  # noqa: E402

from distillery.app.config.files import load_config  # noqa: E402
from distillery.app.workflows.run import run  # noqa: E402
from distillery.eval.noise import accuracy_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def evaluation(config: str, run_dir: Path, *overrides: str) -> dict:
    """The test evaluation of the example config run into ``run_dir`` with ``overrides`` (reused when finished)."""
    if not (run_dir / "model.json").is_file():
        run(load_config(ROOT / "configs" / config, [f"output_dir={run_dir}", *overrides, "progress=false"]),
            overwrite=True)
    return json.loads((run_dir / "evaluation.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/text-classes"))
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    started = time.perf_counter()
    if not Path("own_data/kjv_parts/train.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_kjv_parts.py")], check=True)
    epochs = f"train.epochs={args.epochs}"
    teacher = evaluation("kjv_parts_teacher.yaml", args.out / "teacher", epochs, "role=teacher")
    student = ["model.config.num_hidden_layers=1", epochs]
    scratch = evaluation("kjv_parts_teacher.yaml", args.out / "scratch", *student, "role=scratch")
    rows = [("teacher, 4 blocks", teacher), ("student, 1 block, labels alone", scratch)]
    arms = {"hinton": ["distill.method=hinton"], "dkd": ["distill.method=dkd", "distill.alpha=null"],
            "hinton + hidden states (weight 1)": ["distill.method=hinton", "distill.hidden_weight=1"]}
    for name, settings in arms.items():
        folder = name.split(" ")[0] + ("-hidden" if "hidden" in name else "")
        distilled = evaluation("kjv_parts_distill.yaml", args.out / folder, epochs,
                               f"distill.teacher={args.out / 'teacher'}", *settings)
        rows.append((f"student, 1 block, {name} (started from the teacher's first block)", distilled))
    source = provenance()
    print(f"Machine: {source['machine']}. Commit `{source['commit']}`. {teacher['samples']:,} test verses; "
          f"wall time {time.perf_counter() - started:.0f} s.\n")
    print("| model | parameters | test accuracy | NLL | ECE | against the labels-alone student (95% interval) |\n"
          "|---|---|---|---|---|---|")
    for name, result in rows:
        against = ("–" if result is scratch or result is teacher else
                   accuracy_difference(result["accuracy"], scratch["accuracy"], result["samples"]).describe("verses"))
        print(f"| {name} | {result['parameters']:,} | {result['accuracy']:.2%} | {result['nll']:.3f} | "
              f"{result['ece']:.3f} | {against} |")


if __name__ == "__main__":
    main()
