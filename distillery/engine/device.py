"""Choosing the device: the only place that asks what hardware there is."""
from __future__ import annotations

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
