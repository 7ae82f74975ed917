"""How a training state is written without pickling: tensors apart (for safetensors), the rest as JSON.

Also the random generators' states and the method's trainable state, which a saved state holds.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from distillery.engine.progress import FitResult, PeerBest

# How containers JSON has no form for are written: a tensor by its key in the safetensors file, a tuple,
# and a dict keyed by integers (an optimiser's per-parameter state).
TENSOR, TUPLE, INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"


def encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``value`` as JSON-ready data; every tensor in it moves to ``tensors`` under a key derived from ``key``.

    Example: ``encode({"w": torch.ones(2)}, tensors, "model") == {"w": {"__tensor__": "model/w"}}``
    """
    if isinstance(value, torch.Tensor):
        # A clone per tensor: safetensors refuses tensors that share storage (tied weights).
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(name, str) for name in value):
            return {name: encode(item, tensors, f"{key}/{name}") for name, item in value.items()}
        return {INT_KEYS: [[int(name), encode(item, tensors, f"{key}/{name}")] for name, item in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [encode(item, tensors, f"{key}/{index}") for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [encode(item, tensors, f"{key}/{index}") for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"the training state cannot hold a {type(value).__name__} (at {key})")  # a bug, not a user error


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`. Example: ``decode(encode(state, tensors, "s"), tensors)`` equals ``state``."""
    if isinstance(value, list):
        return [decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {TENSOR}:
        if value[TENSOR] not in tensors:
            raise KeyError(value[TENSOR])
        return tensors[value[TENSOR]]
    if set(value) == {TUPLE}:
        return tuple(decode(item, tensors) for item in value[TUPLE])
    if set(value) == {INT_KEYS}:
        return {int(name): decode(item, tensors) for name, item in value[INT_KEYS]}
    return {name: decode(item, tensors) for name, item in value.items()}


def rng_states() -> dict[str, Any]:
    """Every random generator training may draw from: Python's, NumPy's, torch's CPU one and each CUDA device's."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    states = {"python": random.getstate(), "numpy": [name, keys.tolist(), position, has_gauss, cached],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def trainable_state(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The method's state without its frozen teachers: those are rebuilt from the config, unchanged."""
    return changing_state(method, tuple(f"{name}." for name in getattr(method, "teacher_names", ())))


def changing_state(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """``module``'s state without what training never changes: its frozen parameters (a LoRA student's base
    weights, which the run rebuilds from its config unchanged, as it does its teachers) and the keys under the
    ``skip`` prefixes. Buffers stay: training may change them (batch-norm statistics)."""
    frozen = frozen_keys(module)
    return {key: value for key, value in module.state_dict().items() if key not in frozen and not key.startswith(skip)}


def frozen_keys(module: torch.nn.Module) -> set[str]:
    """The state-dict keys of ``module``'s parameters that do not require gradients (shared ones under each name)."""
    return {name for name, parameter in module.named_parameters(remove_duplicate=False) if not parameter.requires_grad}


def load_changing_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`changing_state` into ``module``; raises RuntimeError when more than its frozen keys are missing
    or a key is unknown (the state was taken from another module)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - frozen_keys(module))
    if missing or unexpected:
        raise RuntimeError(f"the state does not fit the module (missing: {missing[:3]}, unexpected: {unexpected[:3]})")


def result_payload(result: FitResult) -> dict[str, Any]:
    peers = {name: {"state": best.state, "epoch": best.epoch, "score": best.score, "metrics": best.metrics}
             for name, best in result.peers.items()}
    return {"history": result.history, "best_state": result.best_state, "best_epoch": result.best_epoch,
            "best_score": result.best_score, "best_metrics": result.best_metrics, "peers": peers}


def result_from(payload: dict[str, Any]) -> FitResult:
    peers = {name: PeerBest(**best) for name, best in payload.pop("peers").items()}
    return FitResult(**payload, peers=peers)
