"""The one run skeleton: config -> build (the task's data and teachers, the student, the method, the batches) -> fit
-> write, the same for every task (:mod:`distillery.app.tasks`): run directory, torchrun, resume, teachers, method,
fit and write happen here once."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.app.config import RunConfig
from distillery.app.steps.fit import fit
from distillery.app.steps.method import build_method, peer_architectures
from distillery.app.steps.resume import checkpointer_for, start_or_resume
from distillery.app.steps.write import RunWriter
from distillery.app.tasks import Prepared, Task, task_for
from distillery.engine import RunDirectory
from distillery.engine.distributed import setup_distributed
from distillery.engine.fsdp import full_state
from distillery.engine.training_state import read_training_state
from distillery.errors import NumericalError
from distillery.messages import note
from distillery.models import initialize_from_teacher
from distillery.models.adapters import adapter_summary, add_lora, describe_adapters


def run_one(config: RunConfig, task: Task | None = None, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Train (``config.distill`` absent) or distil one student as configured; returns the run directory.

    ``task`` defaults to the one of the config's data (:func:`~distillery.app.tasks.task_for`). Nothing is written
    before every step that can refuse the config has been built: a config, teacher or cache error leaves the
    directory as it was. See :func:`distillery.app.workflows.run.run` for the public entry.
    """
    task = task or task_for(config)
    task.check(config)
    run_dir = RunDirectory(config.output_dir, overwrite=overwrite)
    # Under torchrun: one process of many, only rank 0 writes; with train.parallel: fsdp the models are sharded.
    context = setup_distributed(config.device).sharded(config.train.parallel)
    context.check_global_batch(config.train.batch_size)
    saved = read_training_state(run_dir.path) if resume else None  # refused before any work if there is none

    # Build: the data and teachers, the student, the method, the batches with the teacher's outputs.
    prepared = task.prepare(config)
    model, metadata = _student(config, task, prepared)
    prepared.first_teacher = None  # copied from, if at all: a teacher not distilled from is not held during training
    method = build_method(config, model, prepared.teacher, prepared.input_shape, prepared.num_classes)
    peers = peer_architectures(config, method)
    train_batches, source_note = task.training_batches(config, prepared, method, context, metadata)
    start_or_resume(run_dir, config, method, saved, list(peers), context)
    if context.is_main:
        task.save_beside(run_dir, prepared)
    initialised = metadata.get("initialized_from_teacher")
    alone = config.train.parallel == "fsdp" and not context.active
    for line in (task.describe(prepared), source_note, initialised and f"student initialised: {initialised}",
                 "adapters" in metadata and describe_adapters(metadata["adapters"]),
                 alone and "train.parallel: fsdp shards the models across torchrun's processes; with one process "
                           "it trains as usual"):
        if line:
            note(line)

    # Fit, writing each epoch's record and last weights as it goes.
    writer = RunWriter(run_dir, metadata, peers, context)
    try:
        result = fit(method, train_batches, task.validation_batches(config, prepared), config.train,
                     seed=config.seed, device=config.device, progress=config.progress, best=task.best,
                     on_epoch_end=writer.after_epoch if context.is_main or context.fsdp else None,
                     description=metadata["role"],
                     resume=saved, checkpointer=checkpointer_for(config, run_dir, saved, context))
    except NumericalError as error:
        last = run_dir.path / "last.safetensors"
        kept = f"; the last finished epoch is in {last}" if last.is_file() else "; no epoch had finished"
        raise NumericalError(f"{error}{kept}") from None

    # Write: the best student, its test evaluation, each peer's.
    if context.fsdp:
        _finish_sharded(config, task, prepared, result, writer, context)
    elif context.is_main:
        writer.finish(result, task.test_evaluation(config, prepared, result.model, prepared.teacher),
                      lambda peer: task.test_evaluation(config, prepared, peer, None))
    context.barrier()  # every process returns once the run directory is complete
    return run_dir.path


def _finish_sharded(config: RunConfig, task: Task, prepared: Prepared, result, writer: RunWriter,
                    context) -> None:
    """The end of a sharded run: every process evaluates the sharded student on the whole test split (each forward
    gathers its blocks from all of them, so all must run it) and sends rank 0 its shards of the weights; rank 0
    writes. Latency is not measured: a sharded model's forward times the gathering, not the model."""
    if config.measure_latency and context.is_main:
        note("latency is not measured for a sharded student; `distillery evaluate` its checkpoint to measure it")
    quiet = config.model_copy(update={"measure_latency": False})
    evaluation = task.test_evaluation(quiet, prepared, result.model, prepared.teacher)
    state = full_state(result.model)
    if context.is_main:
        writer.finish(result, evaluation, lambda peer: {}, state=state)


def _student(config: RunConfig, task: Task, prepared: Prepared) -> tuple[nn.Module, dict[str, Any]]:
    """The task's student from the run's seed, started from the teacher's weights where the config says so, then
    given its LoRA adapters (which wrap the modules the teacher's weights went into); and its model.json record."""
    torch.manual_seed(config.seed)
    model = task.student(config, prepared)
    metadata = task.metadata(config, prepared, model)
    if prepared.first_teacher is not None and config.distill.init_from_teacher:
        layer_map = config.distill.init_layer_map or task.default_layer_map(model, prepared.first_teacher)
        report = initialize_from_teacher(model, prepared.first_teacher, layer_map)
        metadata["initialized_from_teacher"] = report.summary()
    if "lora" in config.model:
        model = add_lora(model, config.model["lora"])
        metadata["adapters"] = adapter_summary(model)
    return model, metadata
