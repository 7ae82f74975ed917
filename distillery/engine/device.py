"""Choosing the device: the only place that asks what hardware there is."""
from __future__ import annotations

import contextlib

import torch

from distillery.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; ``"cpu"``/``"cuda"``/``"cuda:1"`` are taken as given.

    Example::

        device = resolve_device("auto")
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available; use device: cpu or auto")
    return device


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str):
    """The context a training step runs in: plain float32, or bfloat16 autocast on the step's device.

    bf16 keeps float32's exponent range, so unlike float16 it needs no gradient scaler; softmax, log-softmax
    and the losses stay in float32 under autocast's own rules.

    Example::

        with autocast(torch.device("cuda"), "bf16"):
            output = method.step(batch)
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compile_student(method: torch.nn.Module) -> None:
    """Compile the student's forward in place with torch.compile (its state_dict keys do not change).

    Methods that read features through forward hooks keep an uncompiled student: hooks on modules
    inside a compiled graph are not guaranteed to fire.
    """
    check_compilable(method)
    method.student.compile()


def check_compilable(method: torch.nn.Module) -> None:
    """Refuse train.compile for a method that reads the student's features through hooks (see compile_student)."""
    if getattr(method, "uses_feature_hooks", False):
        name = getattr(method, "name", "") or type(method).__name__
        raise ConfigError(f"train.compile cannot be combined with method {name!r}, which reads the "
                          "student's intermediate layers while it runs, which a compiled model does not show; set "
                          "train.compile: false")
