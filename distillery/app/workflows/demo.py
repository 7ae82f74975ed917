"""The embedded demo: teacher -> student from scratch -> distilled student, then the report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.app.config.files import build_config, merge
from distillery.app.workflows.run import run
from distillery.errors import ConfigError
from distillery.eval.report import comparison_table, write_report
from distillery.eval.run_record import load_run

# Per dataset: the data section (with the teacher's additions), the teacher and student architectures and their
# training budgets; optionally the students' labelled share (transfer) and the scratch student's own budget.
# The digits recipe finishes in well under 3 minutes on 2 CPU cores; Fashion-MNIST in about 5.
DEMOS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": {"dataset": "digits", "val_fraction": 0.15},
        "teacher_data": {"augment": {"shift": 1}},
        "teacher": {"name": "cnn", "channels": [32, 64], "hidden": 128, "dropout": 0.2},
        "teacher_train": {"epochs": 40, "batch_size": 64, "lr": 0.003},
        "student": {"name": "mlp", "hidden": [16]},
        # Few labels, where soft targets pay most (Hinton et al. 2015): both students keep the labels of the same
        # 5% of the training images; the distilled one also learns the teacher's soft targets on all of them.
        "transfer": {"labeled_fraction": 0.05},
        # The scratch student's best budget of 40, 200 and 400 epochs on its 61 images: a fair baseline.
        "scratch_train": {"epochs": 400, "batch_size": 64, "lr": 0.003},
        "student_train": {"epochs": 40, "batch_size": 64, "lr": 0.003},
        "distill": {"method": "hinton", "temperature": 4.0, "alpha": 0.5},
        "setting": "both students see the labels of the same 5% of the training images (61); the distilled one "
                   "also learns from the teacher's soft targets on all 1,221; the scratch student trains 400 epochs, "
                   "its best budget of 40, 200 and 400",
    },
    "fashion-mnist": {
        "data": {"dataset": "fashion-mnist", "val_fraction": 0.1},
        "teacher_data": {"augment": {"shift": 2, "flip": True}},
        "teacher": {"name": "cnn", "channels": [32, 64, 128], "batch_norm": True, "dropout": 0.2, "hidden": 256},
        "teacher_train": {"epochs": 5, "batch_size": 128, "lr": 0.002},
        "student": {"name": "mlp", "hidden": [128]},
        "student_train": {"epochs": 30, "batch_size": 128, "lr": 0.002},
        # The settings BENCHMARKS.md found for this student: low T, a long schedule soft targets make safe.
        "distill": {"method": "hinton", "temperature": 2.0, "alpha": 0.5},
    },
}


@dataclass
class DemoResult:
    run_dirs: dict[str, Path]
    report: dict[str, Path]
    table: str
    setting: str = ""  # what the comparison holds fixed and what it varies, in a sentence


def demo(dataset: str = "digits", output_dir: str | Path = "demo-out", *, overwrite: bool = False,
         seed: int = 0, progress: bool = True) -> DemoResult:
    """Train a teacher, a student from scratch and a distilled student with the same budget; write the report.

    Example::

        result = distillery.demo("digits", "demo-out")
        print(result.table)
    """
    if dataset not in DEMOS:
        raise ConfigError(f"no demo for dataset {dataset!r}; choose one of: {', '.join(DEMOS)}")
    recipe = DEMOS[dataset]
    output_dir = Path(output_dir)
    common = {"seed": seed, "data": recipe["data"], "progress": progress}
    few_labels = {"transfer": recipe["transfer"]} if "transfer" in recipe else {}
    configs = {
        "teacher": {**common, "role": "teacher", "model": recipe["teacher"], "train": recipe["teacher_train"],
                    "data": merge(recipe["data"], recipe.get("teacher_data", {}))},
        "scratch": {**common, "role": "scratch", "model": recipe["student"],
                    "train": recipe.get("scratch_train", recipe["student_train"]), **few_labels},
        "distilled": {**common, "role": "distilled", "model": recipe["student"], "train": recipe["student_train"],
                      "distill": {**recipe["distill"], "teacher": str(output_dir / "teacher")}, **few_labels},
    }
    run_dirs = {}
    for name, document in configs.items():
        config = build_config({**document, "output_dir": str(output_dir / name)}, source=f"{dataset} demo")
        run_dirs[name] = run(config, overwrite=overwrite)
    report = write_report(list(run_dirs.values()), output_dir / "report", title=f"Distillation demo: {dataset}")
    table = comparison_table([load_run(path) for path in run_dirs.values()])
    return DemoResult(run_dirs=run_dirs, report=report, table=table, setting=recipe.get("setting", ""))
