"""Build step 3, the method: the student's training method from the config's distill: section, with the
models it trains beside the student (peers, an online teacher) built from seeds of their own."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distillery.app.config import RunConfig
from distillery.app.steps.load_teachers import options_in_hint_teacher
from distillery.errors import ModelError
from distillery.methods import BuildContext, Method, build_method as build_named_method, create_method
from distillery.models import build_model


def build_method(config: RunConfig, model: nn.Module, teacher: nn.Module | None, input_shape: tuple[int, ...],
                 num_classes: int) -> Method:
    """The configured method (supervised training without a distill: section) around ``model``."""
    if config.distill is None:
        return create_method("supervised", model, label_smoothing=config.train.label_smoothing)

    def new_model(spec: dict[str, Any], setting: str, seed_offset: int) -> nn.Module:
        # Models trained beside the student each start from a seed of their own, so no two begin alike.
        return fresh_model(spec, setting, config.seed + seed_offset, input_shape, num_classes)

    context = BuildContext(input_shape=tuple(input_shape), num_classes=num_classes,
                           label_smoothing=config.train.label_smoothing,
                           labels=config.transfer is None or config.transfer.labels, new_model=new_model)
    options = options_in_hint_teacher(config, teacher)
    return build_named_method(config.distill.method, model, teacher, options, context)


def fresh_model(spec: dict[str, Any], setting: str, seed: int, input_shape: tuple[int, ...],
                num_classes: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return build_model(spec, input_shape, num_classes)
    except ModelError as error:
        raise ModelError(f"distill.{setting}: {error}") from None


def peer_architectures(config: RunConfig, method: Method) -> dict[str, dict[str, Any]]:
    """Each peer's model spec by the name the method gives it; a method keeps its peers in the configured order."""
    names = list(method.peer_models())
    if not names:
        return {}
    return dict(zip(names, config.distill.options.peer_specs(), strict=True))
