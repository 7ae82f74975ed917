"""Build step 3, the method: the student's training method from the config's distill: section, with the
models it trains beside the student (peers, an online teacher) built from seeds of their own."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillery.app.config import RunConfig
from distillery.app.teachers import paths_in_hint_teacher
from distillery.errors import ModelError
from distillery.methods import create_method, method_accepts
from distillery.models import build_model

TEACHER_SETTINGS = {"teacher", "teacher_weights", "ensemble", "init_from_teacher", "init_layer_map", "method",
                    "hint_teacher", "teacher_cache", "teacher_views", "feature_cache_mb", "calibrate_merge"}


def build_method(config: RunConfig, model: nn.Module, teacher: nn.Module | None, input_shape: tuple[int, ...],
                num_classes: int):
    if config.distill is None:
        return create_method("supervised", model, label_smoothing=config.train.label_smoothing)
    options = config.distill.model_dump(exclude=TEACHER_SETTINGS, exclude_none=True)
    if config.transfer is not None and not config.transfer.labels and method_accepts(config.distill.method, "alpha"):
        options["alpha"] = 0.0  # no labels, no hard-label term: the soft term weighs 1 - alpha = 1
    paths_in_hint_teacher(config, options, teacher)
    # Models trained beside the student each start from a seed of their own, so no two begin alike.
    if "peers" in options:
        options["peers"] = [fresh_model(spec, f"peers[{index}]", config.seed + 1 + index, input_shape, num_classes)
                            for index, spec in enumerate(options["peers"])]
    if "teacher_model" in options:
        options["teacher_model"] = fresh_model(options["teacher_model"], "teacher_model", config.seed + 1,
                                                input_shape, num_classes)
    if method_accepts(config.distill.method, "input_shape"):
        options["input_shape"] = input_shape  # feature methods size their adapters with one dummy forward
    if method_accepts(config.distill.method, "label_smoothing"):  # a method without a label term has none to smooth
        options["label_smoothing"] = config.train.label_smoothing
    return create_method(config.distill.method, model, teacher, **options)


def fresh_model(spec: dict[str, Any], setting: str, seed: int, input_shape: tuple[int, ...],
                 num_classes: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return build_model(spec, input_shape, num_classes)
    except ModelError as error:
        raise ModelError(f"distill.{setting}: {error}") from None


def peer_architectures(config: RunConfig, method) -> dict[str, dict[str, Any]]:
    """Each peer's model spec by the name the method gives it; a method keeps its peers in the configured order."""
    names = list(method.peer_models())
    if not names:
        return {}
    return dict(zip(names, config.distill.peers or [config.distill.teacher_model], strict=True))
