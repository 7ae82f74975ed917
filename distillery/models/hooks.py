"""Reading a model's intermediate features through forward hooks, by module path, without changing the model."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from distillery.errors import ModelError

SHOWN_PATHS = 20


def module_paths(model: nn.Module) -> list[str]:
    """Every submodule's path (``"features.0"``, ``"layer1.1"``), in definition order; the root is left out."""
    return [name for name, _ in model.named_modules() if name]


def resolve_module(model: nn.Module, path: str, role: str) -> nn.Module:
    """The submodule at ``path``; a wrong path raises ModelError listing valid ones.

    Example::

        resolve_module(teacher, "layer3.1", "teacher")
    """
    modules = dict(model.named_modules())
    if path and path in modules:
        return modules[path]
    paths = module_paths(model)
    shown = ", ".join(paths[:SHOWN_PATHS]) + (", …" if len(paths) > SHOWN_PATHS else "")
    close = difflib.get_close_matches(str(path), paths, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ModelError(f"{role} has no module {path!r}{hint}; valid paths: {shown or 'none (no submodules)'}")


@contextmanager
def capture_features(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each named module's forward output lands in the yielded dict under its name.

    Hooks are removed on exit, also when the block raises. A module run twice keeps its last output.

    Example::

        with capture_features({"hint": resolve_module(model, "features.1", "student")}) as features:
            logits = model(inputs)
        features["hint"]  # the output of model.features[1]
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, module in modules.items():
            def store(_module: nn.Module, _inputs: object, output: torch.Tensor, name: str = name) -> None:
                captured[name] = output
            handles.append(module.register_forward_hook(store))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def probe_feature_shapes(model: nn.Module, paths: Sequence[str], role: str,
                         input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The output shape (batch of 2 included) of each module in ``paths`` for one dummy batch.

    Runs in eval mode under no_grad, then restores every module's own mode, so batch-norm
    statistics and dropout state are left as they were.
    """
    return probe_shapes(model, paths, role, input_shape)[1]


def probe_shapes(model: nn.Module, paths: Sequence[str], role: str,
                 input_shape: Sequence[int]) -> tuple[tuple[int, ...] | None, list[tuple[int, ...]]]:
    """The model's own output shape (None when it returns no tensor) and each module's in ``paths``,
    found as :func:`probe_feature_shapes` finds them.

    Example::

        output_shape, (stage_shape,) = probe_shapes(student, ["features.0"], "student", (1, 8, 8))
    """
    modules = {path: resolve_module(model, path, role) for path in paths}
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), capture_features(modules) as features:
            output = model(torch.zeros(2, *input_shape, device=device))
    finally:
        for module, mode in modes:
            module.training = mode
    shapes = []
    for path in paths:
        if not isinstance(features.get(path), torch.Tensor):
            raise ModelError(f"{role} module {path!r} did not output a tensor in a forward pass; "
                             "pick a layer that runs and returns one tensor")
        shapes.append(tuple(features[path].shape))
    return (tuple(output.shape) if isinstance(output, torch.Tensor) else None), shapes
