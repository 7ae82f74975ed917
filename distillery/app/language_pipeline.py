"""One text run, its steps in order: config -> build (tokenised data, teacher, student, method) -> fit -> write.
Language models (next-token prediction) and text classifiers alike (see :mod:`distillery.app.language_tasks`), on
the same engine as every other run: the trainer, the training state and resume, torchrun, the run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.app.config import RunConfig
from distillery.app.fit import fit_configured
from distillery.app.language_data import check_tokenizers, load_language_teacher, teacher_entry, teacher_tokenizer_path
from distillery.app.language_tasks import TASKS
from distillery.app.method import build_method
from distillery.app.resume import checkpointer_for, discard_state, start_or_resume
from distillery.app.teachers import trusted_factories
from distillery.app.write import RunWriter
from distillery.engine import RunDirectory, resolve_device
from distillery.engine.distributed import DistributedContext, setup_distributed
from distillery.engine.training_state import read_training_state
from distillery.errors import ConfigError, NumericalError
from distillery.messages import note
from distillery.methods import METHODS
from distillery.models import build_model, count_parameters, initialize_from_teacher
from distillery.models.text_transformers import architecture_config, every_kth_block_map
from distillery.teachers.top_k_cache import describe, top_k_targets


def run_language_model(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Train (no ``distill:``) or distil one language model or text classifier as configured; returns the run
    directory. Nothing is written before the data, teacher, tokenizer and student have been built and checked."""
    task = TASKS[config.data.dataset]
    _refuse_image_settings(config)
    run_dir = RunDirectory(config.output_dir, overwrite=overwrite)
    context = setup_distributed(config.device)
    context.check_global_batch(config.train.batch_size)
    saved = read_training_state(run_dir.path) if resume else None

    entry = teacher_entry(config) if config.distill is not None else None
    teacher_tokenizer = teacher_tokenizer_path(entry) if entry is not None else None
    tokenizer_path = config.data.tokenizer or teacher_tokenizer
    if tokenizer_path is None:
        raise ConfigError("a model without a teacher needs data.tokenizer: a tokenizer folder, tokenizer.json or "
                          ".gguf file")
    data = task.prepare(config.data, tokenizer_path)
    check_tokenizers(data, teacher_tokenizer)  # before the teacher's weights: loading a large one takes a while
    teacher, teacher_metadata = (load_language_teacher(entry, trusted_factories(config), task.kind)
                                 if entry is not None else (None, {}))
    classes = task.classes(data, teacher_metadata)
    _check_student_head(config.model, task.kind, classes)
    torch.manual_seed(config.seed)
    input_shape = tuple(task.metadata(data)["input_shape"])
    model = build_model(task.model_spec(config.model, data), input_shape, classes)
    metadata = _metadata(config, task, data, model, classes)
    if teacher is not None and config.distill.init_from_teacher:
        layer_map = config.distill.init_layer_map or every_kth_block_map(model, teacher)
        metadata["initialized_from_teacher"] = initialize_from_teacher(model, teacher, layer_map).summary()
    method = build_method(config, model, teacher, input_shape, classes)
    top_k_note = _attach_top_k_targets(config, method, teacher, data, context, metadata)
    start_or_resume(run_dir, config, method, saved, [], context)
    if context.is_main:
        run_dir.save_tokenizer(data.tokenizer)
    for line in (task.describe(data), top_k_note, metadata.get("initialized_from_teacher")):
        if line:
            note(line)

    writer = RunWriter(run_dir, metadata, {})
    batch_size = config.train.batch_size
    try:
        result = fit_configured(config, method, task.batches(data.train, batch_size, shuffle=True, seed=config.seed),
                                task.batches(data.val, batch_size) if data.val is not None else None,
                                on_epoch_end=writer.after_epoch if context.is_main else None,
                                description=metadata["role"], resume=saved,
                                checkpointer=checkpointer_for(config, run_dir, saved, context))
    except NumericalError as error:
        raise NumericalError(f"{error}; the last finished epoch is in {run_dir.path / 'last.safetensors'}") from None
    if context.is_main:
        evaluation = task.test_evaluation(result.model, data, teacher, config)
        run_dir.write_evaluation({"name": run_dir.path.name, "role": metadata["role"], "split": "test", **evaluation})
        run_dir.save_model("model", result.model, {**metadata, "epoch": result.best_epoch, "metrics": result.metrics})
        discard_state(run_dir)
    context.barrier()
    return run_dir.path


def _attach_top_k_targets(config: RunConfig, method, teacher: nn.Module | None, data: Any,
                          context: DistributedContext, metadata: dict[str, Any]) -> str | None:
    """With ``distill.top_k`` and the cache on: the teacher's top-k targets for the training blocks, built once (by
    rank 0 first under torchrun) and memory-mapped; returns the line that says what they cost, and records it in
    ``metadata`` (k, bytes a token, the teacher's tokens a second when built)."""
    if config.distill is None or config.distill.top_k is None or config.distill.teacher_cache == "off":
        return None
    if config.distill.teacher_cache != "auto":
        raise ConfigError("top-k targets live in the shared cache directory; set distill.teacher_cache to auto (or "
                          "off, to compute them live)")
    targets, built = context.main_first(lambda: top_k_targets(
        teacher, data.train, config.distill.top_k, batch_size=config.train.batch_size,
        device=context.place(resolve_device(config.device)), progress=config.progress and context.is_main))
    method.use_top_k_targets(targets)
    manifest = targets.manifest
    metadata["top_k_targets"] = {"k": manifest["k"], "bytes_per_token": targets.bytes_per_token,
                                 "teacher_tokens_per_s": manifest["teacher_tokens_per_s"], "built_now": built}
    return describe(targets, built)


def _metadata(config: RunConfig, task, data: Any, model: nn.Module, classes: int) -> dict[str, Any]:
    """model.json's record: the architecture as a self-contained config (not the path it was shrunk from)."""
    return {
        "role": config.role or ("distilled" if config.distill else "scratch"),
        "task": task.name,
        # A user's factory is recorded by name (a checkpoint names it only where the user allows it).
        "architecture": ({"name": task.kind, "config": architecture_config(model.config)}
                         if config.model["name"] == task.kind else dict(config.model)),
        **task.metadata(data),
        "num_classes": classes,
        "preprocessing": None,
        "dataset": {"name": config.data.dataset, "path": config.data.path, "options": config.data.source_options()},
        "tokenizer": "tokenizer",
        "parameters": count_parameters(model),
        "config": config.model_dump(mode="json"),
    }


def _check_student_head(spec: dict[str, Any], kind: str, classes: int) -> None:
    if spec.get("name") != kind and ":" not in str(spec.get("name")):
        raise ConfigError(f"this run's data needs model.name: {kind}, or a package.module:function factory of "
                          f"yours that takes input_ids and attention_mask; got {spec.get('name')!r}")
    if kind != "causal_lm":
        return
    named = spec.get("vocab_size", (spec.get("config") or {}).get("vocab_size"))
    if named is not None and int(named) != classes:
        raise ConfigError(f"the student's vocab_size ({named}) is not the teacher's and tokenizer's ({classes}); "
                          "remove vocab_size from model: (it follows the teacher)")


def _refuse_image_settings(config: RunConfig) -> None:
    """Settings of image and table runs that a text run would otherwise ignore without a word, and methods that do
    not fit text: the feature methods probe image feature maps, token_kd needs next-token predictions."""
    method = config.distill.method if config.distill is not None else None
    if method is not None and getattr(METHODS.get(method), "uses_feature_hooks", False):
        raise ConfigError(f"method {method!r} matches image feature maps; for transformers use distill.hidden_weight "
                          "(with hinton, dkd, dist or logit_mse for classifiers, token_kd for language models)")
    if method == "token_kd" and config.data.dataset != "text":
        raise ConfigError("method 'token_kd' distils next-token distributions of language models; a text classifier "
                          "uses hinton, dkd, dist or logit_mse")
    if config.transfer is not None:
        raise ConfigError("transfer: chooses image and table transfer sets; a text run trains on data.path, remove it")
    distill = config.distill
    unused = [name for name in ("teacher_views", "calibrate_merge", "teacher_weights", "hint_teacher")
              if distill is not None and getattr(distill, name) is not None]
    if unused:
        raise ConfigError(f"distill.{unused[0]} is for image and table runs; remove it from this text run")
