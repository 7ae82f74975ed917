"""One run, its steps in order: config -> build (data, teachers, student, method, transfer batches) -> fit -> write."""
from __future__ import annotations

from pathlib import Path

import torch

from distillery.app.config import RunConfig
from distillery.app.fit import fit_configured
from distillery.app.method import build_method, peer_architectures
from distillery.app.resume import checkpointer_for, start_or_resume
from distillery.app.teachers import teachers_and_data
from distillery.app.transfer import transfer_plan
from distillery.app.write import RunWriter, run_metadata
from distillery.data import BatchIterator
from distillery.engine import RunDirectory
from distillery.engine.distributed import setup_distributed
from distillery.engine.training_state import read_training_state
from distillery.errors import NumericalError
from distillery.messages import note
from distillery.models import build_model, initialize_from_teacher


def run_pipeline(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Train (``config.distill`` absent) or distil one student as configured; returns the run directory.

    Nothing is written before every step that can refuse the config has been built: a config, teacher or
    cache error leaves the directory as it was. See :func:`distillery.app.run.run` for the public entry.
    """
    run_dir = RunDirectory(config.output_dir, overwrite=overwrite)
    context = setup_distributed(config.device)  # under torchrun: one process of many, only rank 0 writes
    context.check_global_batch(config.train.batch_size)
    saved = read_training_state(run_dir.path) if resume else None  # refused before any work if there is none

    # Build: data and teachers, the student, the method, the batches with the teacher's outputs.
    teachers, data, teacher = teachers_and_data(config)
    torch.manual_seed(config.seed)
    # The evaluation data's classes, not the transfer set's: a student distilled without some class still predicts it.
    model = build_model(config.model, data.test.input_shape, data.test.num_classes)
    metadata = run_metadata(config, data, model)
    if teachers and config.distill.init_from_teacher:
        report = initialize_from_teacher(model, teachers[0].model, config.distill.init_layer_map)
        metadata["initialized_from_teacher"] = report.summary()
    method = build_method(config, model, teacher, data.test.input_shape, data.test.num_classes)
    peers = peer_architectures(config, method)
    plan = context.main_first(lambda: transfer_plan(config, data, teachers, teacher))  # rank 0 writes the cache first
    plan.apply_to(method)
    start_or_resume(run_dir, config, method, saved, list(peers), context)
    if plan.note:
        note(plan.note)
    if "initialized_from_teacher" in metadata:
        note(f"student initialised: {metadata['initialized_from_teacher']}")

    # Fit, writing each epoch's record and last weights as it goes.
    writer = RunWriter(run_dir, metadata, peers)
    try:
        result = fit_configured(config, method, plan.batches,
                                BatchIterator(data.val, 512) if data.val is not None else None,
                                on_epoch_end=writer.after_epoch if context.is_main else None,
                                description=metadata["role"], resume=saved,
                                checkpointer=checkpointer_for(config, run_dir, saved, context))
    except NumericalError as error:
        last = run_dir.path / "last.safetensors"
        kept = f"; the last finished epoch is in {last}" if last.is_file() else "; no epoch had finished"
        raise NumericalError(f"{error}{kept}") from None

    # Write: the best student, its test evaluation, each peer's.
    if context.is_main:
        writer.finish(result, data.test, teacher, latency=config.measure_latency)
    context.barrier()  # every process returns once the run directory is complete
    return run_dir.path
