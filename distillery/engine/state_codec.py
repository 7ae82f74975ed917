"""How a training state is written without pickling: tensors apart (for safetensors), the rest as JSON.

Also the random generators' states and the method's trainable state, which a saved state holds.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from distillery.engine.progress import FitResult, PeerBest

# How containers JSON has no form for are written: a tensor by its key in the safetensors file, a sharded tensor
# by its key in the sharded checkpoint, a tuple, and a dict keyed by integers (an optimiser's per-parameter state).
TENSOR, SHARDED, TUPLE, INT_KEYS = "__tensor__", "__sharded__", "__tuple__", "__int_keys__"


class ShardedTensors(dict):
    """Sharded tensors (DTensors) by key, as ``torch.distributed.checkpoint`` saves and loads them: each process
    its own shards. One that shares memory with a tensor already held (tied weights) is held as a copy, since
    safetensors refuses shared memory; the keys are the same on every process whatever their shards hold."""

    def __init__(self) -> None:
        super().__init__()
        self._held: set[tuple[int, int]] = set()

    def hold(self, key: str, tensor: torch.Tensor) -> None:
        local = tensor.to_local()
        where = (local.data_ptr(), local.numel())
        if local.numel() and where in self._held:
            tensor = tensor.detach().clone()
        self._held.add(where)
        self[key] = tensor.detach()


def encode(value: Any, tensors: dict[str, torch.Tensor], key: str, sharded: ShardedTensors | None = None) -> Any:
    """``value`` as JSON-ready data; every tensor in it moves to ``tensors`` under a key derived from ``key``, and,
    given ``sharded``, every sharded tensor (DTensor) to ``sharded``, uncopied.

    Example: ``encode({"w": torch.ones(2)}, tensors, "model") == {"w": {"__tensor__": "model/w"}}``
    """
    if sharded is not None and isinstance(value, DTensor):
        sharded.hold(key, value)
        return {SHARDED: key}
    if isinstance(value, torch.Tensor):
        # A clone per tensor: safetensors refuses tensors that share storage (tied weights).
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(name, str) for name in value):
            return {name: encode(item, tensors, f"{key}/{name}", sharded) for name, item in value.items()}
        return {INT_KEYS: [[int(name), encode(item, tensors, f"{key}/{name}", sharded)]
                           for name, item in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [encode(item, tensors, f"{key}/{index}", sharded) for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [encode(item, tensors, f"{key}/{index}", sharded) for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"the training state cannot hold a {type(value).__name__} (at {key})")  # a bug, not a user error


def decode(value: Any, tensors: dict[str, torch.Tensor], sharded: dict[str, torch.Tensor] | None = None) -> Any:
    """The inverse of :func:`encode`. Example: ``decode(encode(state, tensors, "s"), tensors)`` equals ``state``.
    Raises KeyError naming a tensor that neither ``tensors`` nor ``sharded`` holds."""
    if isinstance(value, list):
        return [decode(item, tensors, sharded) for item in value]
    if not isinstance(value, dict):
        return value
    for marker, held in ((TENSOR, tensors), (SHARDED, sharded or {})):
        if set(value) == {marker}:
            if value[marker] not in held:
                raise KeyError(value[marker])
            return held[value[marker]]
    if set(value) == {TUPLE}:
        return tuple(decode(item, tensors, sharded) for item in value[TUPLE])
    if set(value) == {INT_KEYS}:
        return {int(name): decode(item, tensors, sharded) for name, item in value[INT_KEYS]}
    return {name: decode(item, tensors, sharded) for name, item in value.items()}


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
