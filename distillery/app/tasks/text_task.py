"""What the two text tasks share (next-token prediction, text classification): a tokenizer (the teacher's unless
data.tokenizer names one), one teacher with that tokenizer, a transformer student, the tokenizer saved in the run."""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.steps.load_teachers import trusted_factories
from distillery.app.tasks.cached_teacher import (
    AbsentTeacher,
    check_teacher_logprobs,
    needs_live_teacher,
    teacher_files_key,
)
from distillery.app.tasks.task import Prepared, Task
from distillery.app.tasks.token_data import (
    check_tokenizers,
    load_language_teacher,
    teacher_entry,
    teacher_tokenizer_path,
)
from distillery.engine import RunDirectory, resolve_device
from distillery.engine.distributed import DistributedContext
from distillery.errors import ConfigError
from distillery.methods import Method
from distillery.models import build_model, count_parameters
from distillery.models.text_transformers import architecture_config, every_kth_block_map
from distillery.teachers.logprob_files import describe_file_targets, file_targets
from distillery.teachers.token_targets import TargetSpec, cached_targets, describe, teacher_targets

# Settings of image and table runs that a text run would otherwise ignore without a word.
IMAGE_SETTINGS = ("teacher_views", "calibrate_merge", "teacher_weights", "hint_teacher")


class TextTask(Task):
    """Subclasses give ``model_kind`` (the transformers head), :meth:`load_data`, :meth:`classes`,
    :meth:`model_spec`, :meth:`batches`, :meth:`data_metadata` and :meth:`test_evaluation`."""

    model_kind = ""
    renders_chat = False  # whether the task reads conversations with a chat template

    def check(self, config: RunConfig) -> None:
        super().check(config)
        if config.distill is not None and config.distill.teacher_logprobs is not None:
            check_teacher_logprobs(config, self.model_kind)
        if config.transfer is not None:
            raise ConfigError("transfer: chooses image and table transfer sets; a text run trains on data.path, "
                              "remove it")
        distill = config.distill
        unused = [name for name in IMAGE_SETTINGS if distill is not None and getattr(distill, name) is not None]
        if unused:
            raise ConfigError(f"distill.{unused[0]} is for image and table runs; remove it from this text run")
        chat_settings = [name for name in ("chat_template", "pack") if getattr(config.data, name) not in (None, False)]
        if chat_settings and not self.renders_chat:
            raise ConfigError(f"data.{chat_settings[0]} is for conversations (data.dataset: chat), not "
                              f"{config.data.dataset!r} data; remove it")

    def prepare(self, config: RunConfig) -> Prepared:
        entry = teacher_entry(config) if config.distill is not None else None
        teacher_tokenizer = teacher_tokenizer_path(entry) if entry is not None else None
        tokenizer_path = config.data.tokenizer or teacher_tokenizer
        if tokenizer_path is None:
            raise ConfigError("a model without a teacher needs data.tokenizer: a tokenizer folder, tokenizer.json or "
                              ".gguf file")
        data = self.load_data(config, tokenizer_path)
        check_tokenizers(data, teacher_tokenizer)  # before the teacher's weights: loading a large one takes a while
        teacher_key = teacher_files_key(entry) if entry is not None and self.model_kind == "causal_lm" else None
        if config.distill is not None and config.distill.teacher_logprobs is not None:
            stored = file_targets(config.distill.teacher_logprobs, data.tokenizer, data.train)
        else:
            stored = self._all_targets_cached(config, data, teacher_key)
        if stored is not None:
            vocabulary = int(stored.manifest["vocabulary"])
            teacher, teacher_metadata = AbsentTeacher(vocabulary), {"num_classes": vocabulary}
            # The student may start from the teacher's weights: loaded for that alone, then released.
            first = (load_language_teacher(entry, trusted_factories(config), self.model_kind)[0]
                     if config.distill.init_from_teacher else None)
        else:
            teacher, teacher_metadata = (load_language_teacher(entry, trusted_factories(config), self.model_kind)
                                         if entry is not None else (None, {}))
            first = teacher
        classes = self.classes(data, teacher_metadata)
        _check_student_head(config.model, self.model_kind, classes, min(len(data.tokenizer), classes))
        return Prepared(data=data, input_shape=tuple(self.data_metadata(data)["input_shape"]), num_classes=classes,
                        teacher=teacher, first_teacher=first, teacher_key=teacher_key, stored_targets=stored)

    def _all_targets_cached(self, config: RunConfig, data: Any, teacher_key: str | None):
        """The stored targets of every training block when the method needs the teacher for nothing else
        (:func:`needs_live_teacher`), else None: the teacher is then loaded."""
        if teacher_key is None or needs_live_teacher(config):
            return None
        return cached_targets(data.train, target_spec(config), teacher_key)

    def student(self, config: RunConfig, prepared: Prepared) -> nn.Module:
        return build_model(self.model_spec(config.model, prepared.data), prepared.input_shape,
                           self.student_rows(config, prepared), adapters=False)

    def metadata(self, config: RunConfig, prepared: Prepared, model: nn.Module) -> dict[str, Any]:
        """model.json's record: the architecture as a self-contained config (not the path it was shrunk from)."""
        return {
            "role": config.role or ("distilled" if config.distill else "scratch"),
            "task": self.name,
            # A user's factory is recorded by name (a checkpoint names it only where the user allows it).
            "architecture": ({"name": self.model_kind, "config": architecture_config(model.config),
                              **({"lora": config.model["lora"]} if "lora" in config.model else {})}
                             if config.model["name"] == self.model_kind else dict(config.model)),
            **self.data_metadata(prepared.data),
            "num_classes": self.student_rows(config, prepared),
            "preprocessing": None,
            "dataset": {"name": config.data.dataset, "path": config.data.path,
                        "options": config.data.source_options()},
            "tokenizer": "tokenizer",
            "parameters": count_parameters(model),
            "config": config.model_dump(mode="json"),
        }

    def default_layer_map(self, model: nn.Module, teacher: nn.Module) -> dict[str, str] | None:
        return every_kth_block_map(model, teacher)

    def training_batches(self, config: RunConfig, prepared: Prepared, method: Method, context: DistributedContext,
                         metadata: dict[str, Any]) -> tuple[Iterable, str | None]:
        notes = [_share_rows(config, prepared, method, self.student_rows(config, prepared)),
                 _attach_cached_targets(config, method, prepared, context, metadata)]
        batches = self.batches(prepared.data.train, config.train.batch_size, shuffle=True, seed=config.seed)
        return batches, "; ".join(line for line in notes if line) or None

    def validation_batches(self, config: RunConfig, prepared: Prepared) -> Iterable | None:
        val = prepared.data.val
        return self.batches(val, config.train.batch_size) if val is not None else None

    def save_beside(self, run_dir: RunDirectory, prepared: Prepared) -> None:
        run_dir.save_tokenizer(prepared.data.tokenizer)

    def load_data(self, config: RunConfig, tokenizer_path: str) -> Any:
        raise NotImplementedError

    def classes(self, data: Any, teacher_metadata: dict[str, Any]) -> int:
        raise NotImplementedError

    def student_rows(self, config: RunConfig, prepared: Prepared) -> int:
        """What the student predicts: a language model's output rows are the vocab_size its config names (a head
        padded to its own size), else the teacher's rows (or the tokenizer's); a classifier's, the classes."""
        named = _named_rows(config.model) if self.model_kind == "causal_lm" else None
        return named if named is not None else prepared.num_classes

    def model_spec(self, spec: dict[str, Any], data: Any) -> dict[str, Any]:
        return spec

    def batches(self, dataset: Any, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterable:
        raise NotImplementedError

    def data_metadata(self, data: Any) -> dict[str, Any]:
        raise NotImplementedError


def target_spec(config: RunConfig) -> TargetSpec | None:
    """The top-k or sampled targets the run's method learns from (None: the teacher's whole distributions)."""
    if config.distill is None:
        return None
    return config.distill.options.teacher_targets(seed=config.seed, storage=config.distill.top_k_storage)


def _attach_cached_targets(config: RunConfig, method: Method, prepared: Prepared, context: DistributedContext,
                           metadata: dict[str, Any]) -> str | None:
    """With the method's top-k or sampled targets and the cache on: the teacher's targets for the training blocks,
    built once (every process its share under torchrun) and memory-mapped; returns the line that says what they
    cost, and records it in ``metadata`` (what they are, bytes a token, the teacher's tokens a second when built)."""
    if config.distill is not None and config.distill.teacher_logprobs is not None:
        targets = prepared.stored_targets
        method.use_cached_targets(targets)
        metadata["teacher_targets"] = {"kind": "file", "width": targets.spec.width,
                                       "source": config.distill.teacher_logprobs,
                                       "bytes_per_token": targets.bytes_per_token, "teacher_loaded": False}
        return describe_file_targets(targets, config.distill.teacher_logprobs)
    spec = target_spec(config)
    if spec is None or config.distill.teacher_cache == "off":
        return None
    if config.distill.teacher_cache != "auto":
        raise ConfigError("top-k and sampled targets live in the shared cache directory; set distill.teacher_cache "
                          "to auto (or off, to compute them live)")
    if isinstance(prepared.teacher, AbsentTeacher):
        targets, built = prepared.stored_targets, False
    else:
        targets, built = teacher_targets(
            prepared.teacher, prepared.data.train, spec, teacher_key=prepared.teacher_key, context=context,
            batch_size=config.train.batch_size, device=context.place(resolve_device(config.device)),
            progress=config.progress and context.is_main)
    method.use_cached_targets(targets)
    metadata["teacher_targets"] = {"kind": spec.kind, "width": spec.width, "storage": spec.storage,
                                   "bytes_per_token": targets.bytes_per_token,
                                   "teacher_tokens_per_s": targets.build.get("teacher_tokens_per_s"),
                                   "built_now": built, "teacher_loaded": not isinstance(prepared.teacher,
                                                                                        AbsentTeacher)}
    line = describe(targets, built)
    if isinstance(prepared.teacher, AbsentTeacher):
        line += "; every target is cached, so the teacher was not loaded" + (
            " (only to initialise the student, then released)" if config.distill.init_from_teacher else "")
    return line


def _named_rows(spec: dict[str, Any]) -> int | None:
    named = spec.get("vocab_size", (spec.get("config") or {}).get("vocab_size"))
    return int(named) if named is not None else None


def _share_rows(config: RunConfig, prepared: Prepared, method: Method, rows: int) -> str | None:
    """Heads of different sizes over one tokenizer: the method compares their first rows, the tokenizer's tokens."""
    if config.distill is None or rows == prepared.num_classes:
        return None
    tokens = min(len(prepared.data.tokenizer), prepared.num_classes, rows)
    stored = config.distill.teacher_logprobs is not None or (
        target_spec(config) is not None and config.distill.teacher_cache != "off")
    if stored:  # a store's top-k or samples are taken over the teacher's whole head, padding rows included
        raise ConfigError(f"the teacher's output layer has {prepared.num_classes:,} rows and the student's {rows:,}: "
                          "stored teacher targets (top_k, teacher_samples, teacher_logprobs) need one head size; "
                          "leave model.vocab_size out, or set distill.teacher_cache: off to take them live")
    method.use_shared_rows(tokens)
    return (f"the teacher's output layer has {prepared.num_classes:,} rows and the student's {rows:,}, for one "
            f"tokenizer of {tokens:,} tokens: compared over those {tokens:,} rows, the others (padding, which no "
            "text uses) left out")


def _check_student_head(spec: dict[str, Any], kind: str, classes: int, tokens: int) -> None:
    if spec.get("name") != kind and ":" not in str(spec.get("name")):
        raise ConfigError(f"this run's data needs model.name: {kind}, or a package.module:function factory of "
                          f"yours that takes input_ids and attention_mask; got {spec.get('name')!r}")
    if kind != "causal_lm":
        return
    named = _named_rows(spec)
    if named is not None and named < tokens:  # tokens: those of the tokenizer the teacher (if any) has rows for
        raise ConfigError(f"the student's vocab_size ({named}) has fewer rows than the tokenizer's {tokens} tokens; "
                          f"remove vocab_size from model: (it follows the teacher's {classes})")
