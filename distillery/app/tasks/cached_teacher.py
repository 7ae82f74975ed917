"""A language-model teacher known by its files: the key its cached targets and test scores are filed under, so a run
whose targets are all cached can go without loading it.

The key is a digest of the teacher's files (a run directory's weights and model.json, every file of a Hugging Face
folder, a GGUF file), computed without loading the model. The teacher's test-set scores (perplexity, cross-entropy,
next-token accuracy) are kept under ``$DISTILLERY_CACHE/teacher_scores/``, keyed by the teacher and the test blocks.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.config.sections import TeacherSpec
from distillery.atomic import atomic_write_text
from distillery.cache_dir import default_cache_dir
from distillery.data.text import TokenBlocks
from distillery.engine.distributed import is_main_process
from distillery.errors import ConfigError, ModelError
from distillery.models.checkpoint_files import resolve_checkpoint
from distillery.teachers.cache import cache_key, data_key


class AbsentTeacher(nn.Module):
    """Stands where a teacher whose targets are all cached would be: it holds no weights, and running it is an
    error that says why (a method that needs the live teacher was given cached targets only)."""

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.vocabulary = vocabulary

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise ModelError("the teacher was not loaded because all its targets are cached, yet this step needs it "
                         "live; set distill.teacher_cache: off to load it")


def teacher_files_key(teacher: str | TeacherSpec) -> str:
    """A digest of the teacher's files (names and bytes), read a megabyte at a time."""
    if isinstance(teacher, TeacherSpec):
        place = Path(teacher.huggingface or teacher.gguf)
        files = sorted(path for path in place.iterdir() if path.is_file()) if place.is_dir() else [place]
    else:
        stem = resolve_checkpoint(teacher)  # the checkpoint's path without its suffix
        files = [stem.with_suffix(".safetensors"), stem.with_suffix(".json")]
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def needs_live_teacher(config: RunConfig) -> bool:
    """Whether the run's method runs the teacher during training even with its targets cached: its own continuations
    (on_policy), hidden states, the whole distribution, or a cache turned off."""
    distill = config.distill
    options = distill.options
    if distill.teacher_logprobs is not None:
        return False
    return (distill.teacher_cache != "auto" or options.teacher_targets() is None
            or getattr(options, "on_policy", 0.0) > 0 or getattr(options, "hidden_weight", 0.0) > 0)


def check_teacher_logprobs(config: RunConfig, model_kind: str) -> None:
    """Refuse, in one line, a run that cannot learn from a file of the teacher's top-k log-probabilities alone."""
    distill = config.distill
    options = distill.options
    if model_kind != "causal_lm" or not hasattr(options, "top_k"):
        raise ConfigError("distill.teacher_logprobs is read on text or chat data by a method that takes top-k "
                          f"targets (top_k), not {distill.method!r}")
    if distill.teacher_cache != "auto":
        raise ConfigError("distill.teacher_logprobs is stored in the shared cache directory; set "
                          "distill.teacher_cache to auto")
    if options.teacher_targets() is not None:
        raise ConfigError("distill.teacher_logprobs gives the teacher's top-k targets; remove top_k and "
                          "teacher_samples")
    if options.divergence not in ("forward_kl", "reverse_kl") or options.temperature != 1.0:
        raise ConfigError("a file's top-k log-probabilities are the teacher's at T = 1 with one bucket for the rest: "
                          f"they take divergence forward_kl or reverse_kl at temperature 1, not {options.divergence} "
                          f"at {options.temperature}")
    if options.on_policy > 0 or options.hidden_weight > 0:
        raise ConfigError("on_policy and hidden_weight need the teacher live; a file of log-probabilities has only "
                          "its targets on the data")
    if distill.init_from_teacher and distill.teacher is None:
        raise ConfigError("init_from_teacher copies the teacher's weights; name it in distill.teacher (its targets "
                          "still come from distill.teacher_logprobs)")


def _scores_file(teacher_key: str, test: TokenBlocks) -> Path:
    data = data_key(test.tokens)
    # Which positions count (a chat's assistant turns) and where packed conversations start change the scores too.
    extra = hashlib.sha256(test.counted.numpy().tobytes()
                           + (test.positions.numpy().tobytes() if test.positions is not None else b"")).hexdigest()
    key = cache_key({"teacher": teacher_key, "data": data + extra[:16]})
    return default_cache_dir() / "teacher_scores" / f"{key}.json"


def read_teacher_scores(teacher_key: str, test: TokenBlocks) -> dict[str, Any] | None:
    """The teacher's cached scores on these test blocks, or None."""
    path = _scores_file(teacher_key, test)
    return json.loads(path.read_text()) if path.is_file() else None


def write_teacher_scores(teacher_key: str, test: TokenBlocks, scores: dict[str, Any]) -> None:
    if not is_main_process():
        return  # a sharded run evaluates on every process; one writes
    path = _scores_file(teacher_key, test)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(scores, indent=2))

