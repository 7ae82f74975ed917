"""Born-again generations from a config, a client of the run's steps: every generation a run directory of its
own under <run>/generations/gen<g>/.

See docs/run-directory.md for the files; :func:`distillery.born_again` does the training.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.config.files import dump_config
from distillery.app.steps.prepared_data import PreparedData
from distillery.app.steps.evaluation import evaluate
from distillery.app.steps.fit import Result
from distillery.app.workflows.self_distillation import BornAgainResult, born_again, build_distiller
from distillery.app.tasks import ImageTask
from distillery.data import BatchIterator
from distillery.engine import RunDirectory, resolve_device
from distillery.messages import note
from distillery.engine.distributed import setup_distributed

TRAIN_OPTIONS = {"epochs", "lr", "optimizer", "weight_decay", "momentum", "schedule", "precision", "compile", "grad_clip"}
SUMMARY_KEYS = ("accuracy", "nll", "ece", "agreement")


def run_born_again(config: RunConfig, *, overwrite: bool = False) -> Path:
    """:func:`distillery.app.workflows.run.run` for a config with ``distill.generations``; returns the run directory.

    Example::

        run_dir = run_born_again(load_config("configs/digits_born_again.yaml"))
    """
    distill = config.distill
    run_dir = RunDirectory(config.output_dir, overwrite=overwrite)
    context = setup_distributed(config.device)  # under torchrun only rank 0 writes
    context.check_global_batch(config.train.batch_size)
    task = ImageTask()
    task.check(config)
    prepared = task.prepare(config)
    data, teacher = prepared.data, prepared.teacher

    def model_factory() -> nn.Module:
        return task.student(config, prepared)

    options = distill.options.model_dump(exclude_unset=True)
    label_smoothing = config.train.label_smoothing
    # Checked before the directory is touched, as run() checks its method.
    build_distiller(distill.method, model_factory(), teacher if teacher is not None else model_factory(),
                    {**options, "label_smoothing": label_smoothing})
    resolve_device(config.device)  # before start(): --overwrite clears the directory
    if context.is_main:
        run_dir.start(dump_config(config))
        shutil.rmtree(run_dir.path / "generations", ignore_errors=True)  # a replaced run's generations go with it
    writer = GenerationWriter(config, run_dir, data, task.metadata(config, prepared, model_factory()))
    train_batches = BatchIterator(data.train, config.train.batch_size, shuffle=True, seed=config.seed,
                                  augmentation=data.augmentation, transform=data.normalizer)
    result = born_again(model_factory, train_batches, BatchIterator(data.val, 512) if data.val is not None else None,
                        generations=distill.generations, teacher=teacher, method=distill.method,
                        method_options=options, label_smoothing=label_smoothing, seed=config.seed,
                        device=config.device, progress=config.progress,
                        on_epoch_end=writer.after_epoch if context.is_main else None,
                        on_generation_end=writer.after_generation if context.is_main else None,
                        **config.train.model_dump(include=TRAIN_OPTIONS))
    if context.is_main:
        writer.finish(result)
    context.barrier()  # every process returns once the run directory is complete
    return run_dir.path


class GenerationWriter:
    """Writes each generation's epochs, checkpoint and test evaluation as :func:`born_again` reports them."""

    def __init__(self, config: RunConfig, run_dir: RunDirectory, data: PreparedData, metadata: dict[str, Any]) -> None:
        self.config_text = dump_config(config)
        self.run_dir = run_dir
        self.metadata = metadata
        self.teacher = config.distill.teacher  # generation 0 when given
        self.test_batches = BatchIterator(data.test, 512)
        self.latency = config.measure_latency
        self.directories: dict[int, RunDirectory] = {}
        self.summaries: list[dict[str, Any]] = []
        self.previous: nn.Module | None = None
        self.last_evaluation: dict[str, Any] = {}

    def directory(self, generation: int) -> RunDirectory:
        if generation not in self.directories:
            directory = RunDirectory(self.run_dir.path / "generations" / f"gen{generation}", overwrite=True)
            directory.start(self.config_text)
            self.directories[generation] = directory
        return self.directories[generation]

    def after_epoch(self, record: dict[str, Any], trainer) -> None:
        generation = record["generation"]
        self.run_dir.append_metrics(record)
        self.directory(generation).append_metrics(record)
        self.run_dir.save_model("last", trainer.method.student,
                                {**self.metadata, "generation": generation, "epoch": record["epoch"]})

    def after_generation(self, generation: int, result: Result) -> None:
        # Agreement is measured with each generation's own teacher: the generation before.
        evaluation = evaluate(result.model, self.test_batches, teacher=self.previous, latency=self.latency)
        self.previous, self.last_evaluation = result.model, evaluation
        summary = {"generation": generation, **{key: evaluation[key] for key in SUMMARY_KEYS if key in evaluation}}
        if generation == 0 and self.teacher is not None:
            summary["checkpoint"] = self.teacher
        else:
            role = "scratch" if generation == 0 else "distilled"  # generation 0 learned from the labels alone
            metadata = {**self.metadata, "role": role, "generation": generation, "epoch": result.best_epoch,
                        "metrics": result.metrics}
            directory = self.directory(generation)
            directory.write_evaluation({"name": f"{self.run_dir.path.name}/gen{generation}", "role": role,
                                        "split": "test", **evaluation})
            directory.save_model("model", result.model, metadata)
            summary["checkpoint"] = str(directory.path.relative_to(self.run_dir.path))
        self.summaries.append(summary)
        note(f"generation {generation}: test accuracy {evaluation['accuracy']:.2%}")

    def finish(self, result: BornAgainResult) -> None:
        last = result.generations[-1]
        self.run_dir.write_evaluation({"name": self.run_dir.path.name, "role": self.metadata["role"], "split": "test",
                                       **self.last_evaluation, "generations": self.summaries})
        self.run_dir.save_model("model", last.model, {**self.metadata, "generation": len(result.generations) - 1,
                                                      "epoch": last.best_epoch, "metrics": last.metrics})
