"""``distillery cache`` for language-model runs: the teacher's top-k or sampled targets for the training blocks and its
test-set scores, built ahead of the run (under torchrun, every process its share), so the run never loads the
teacher."""
from __future__ import annotations

import shutil

from distillery.app.config import RunConfig
from distillery.app.steps.load_teachers import trusted_factories
from distillery.app.tasks import task_for
from distillery.app.tasks.cached_teacher import AbsentTeacher, read_teacher_scores, write_teacher_scores
from distillery.app.tasks.text_task import target_spec
from distillery.app.tasks.token_data import load_language_teacher, teacher_entry
from distillery.data.token_batches import TokenBatches
from distillery.engine import resolve_device
from distillery.engine.distributed import setup_distributed
from distillery.errors import ConfigError
from distillery.eval.perplexity import language_model_metrics
from distillery.models import count_parameters
from distillery.teachers.logprob_files import describe_file_targets
from distillery.teachers.token_targets import describe, store_directory, teacher_targets


def cache_language_targets(config: RunConfig, *, rebuild: bool = False) -> str:
    """Build (or find) the teacher's targets for the run's training blocks and cache its test-set scores; returns
    what was done, in one line. Raises ConfigError for a run that learns from the teacher's whole distributions
    (nothing to cache: they are too large) or has the cache off.

    Example: ``print(cache_language_targets(load_config("configs/kjv_top_k.yaml")))``
    """
    task = task_for(config)
    task.check(config)
    if config.distill is None or task.model_kind != "causal_lm":
        raise ConfigError("distillery cache for text builds a language model's top-k or sampled teacher targets; "
                          "this config has no distill: section for a causal_lm")
    if config.distill.teacher_logprobs is not None:
        stored = task.prepare(config).stored_targets  # the file read into the store
        return describe_file_targets(stored, config.distill.teacher_logprobs)
    spec = target_spec(config)
    if spec is None:
        raise ConfigError("this run learns from the teacher's whole distributions, which are not cached (V · 4 bytes "
                          "a token); set distill.top_k or distill.teacher_samples to cache the teacher's targets")
    if config.distill.teacher_cache != "auto":
        raise ConfigError("top-k and sampled targets live in the shared cache directory; set distill.teacher_cache to "
                          f"auto (it is {config.distill.teacher_cache!r})")
    context = setup_distributed(config.device)
    prepared = task.prepare(config)
    data, key = prepared.data, prepared.teacher_key
    if rebuild and context.is_main:
        store = store_directory(data.train, spec, key)[0]
        for folder in (store, store.with_name(store.name + ".pieces")):  # pieces of an earlier build go too
            shutil.rmtree(folder, ignore_errors=True)
    context.barrier()
    scores = None if rebuild else read_teacher_scores(key, data.test)
    teacher = prepared.teacher
    if isinstance(teacher, AbsentTeacher) and not rebuild and scores is not None:
        targets, built = prepared.stored_targets, False
    else:
        if isinstance(teacher, AbsentTeacher):  # targets cached, test scores not (or a rebuild): it is needed
            teacher = load_language_teacher(teacher_entry(config), trusted_factories(config), task.model_kind)[0]
        device = context.place(resolve_device(config.device))
        targets, built = teacher_targets(teacher, data.train, spec, teacher_key=key, context=context,
                                         batch_size=config.train.batch_size, device=device,
                                         progress=config.progress and context.is_main)
        if context.is_main and scores is None:
            scores = language_model_metrics(teacher, TokenBatches(data.test, config.train.batch_size), device=device)
            scores["parameters"] = count_parameters(teacher)
            write_teacher_scores(key, data.test, scores)
    context.barrier()
    return (f"{describe(targets, built)}; the teacher's test perplexity {scores['perplexity']:.2f} is cached"
            if scores is not None else describe(targets, built))
