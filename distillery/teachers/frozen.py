"""Freezing a teacher so it gives fixed targets and never trains."""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator

from torch import nn


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to all its parameters; returns it.

    Eval mode matters as much as the gradients: dropout and batch-norm statistics in train
    mode would change the teacher's outputs from batch to batch and corrupt the targets.

    Example::

        teacher = freeze(teacher)
    """
    model.requires_grad_(False)
    model.eval()
    return model


@contextmanager
def left_as_found(*models: nn.Module | None) -> Iterator[None]:
    """Within the block ``models`` may be frozen, put in eval mode and moved; after it (also when it raises)
    each parameter's ``requires_grad``, each submodule's mode and the model's device are what they were.

    The Python API is handed the caller's own objects: a teacher it froze for a distillation must not
    stay frozen for the caller's next ``distillery.train(teacher, ...)``.

    Example::

        with left_as_found(teacher):
            method = create_method("hinton", student, teacher)   # freezes the teacher
            fit_method(method, batches)
    """
    saved = []
    for model in (m for m in models if m is not None):
        parameters = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        modes = [(module, module.training) for module in model.modules()]
        devices = {tensor.device for tensor in itertools.chain(model.parameters(), model.buffers())}
        saved.append((model, parameters, modes, devices.pop() if len(devices) == 1 else None))
    try:
        yield
    finally:
        for model, parameters, modes, device in saved:
            if device is not None:
                model.to(device)
            for parameter, requires_grad in parameters:
                parameter.requires_grad_(requires_grad)
            for module, training in modes:
                module.training = training
