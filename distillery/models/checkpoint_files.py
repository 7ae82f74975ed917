"""Model checkpoints: safetensors weights with a JSON metadata file beside them, written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distillery.atomic import atomic_write, atomic_write_text
from distillery.errors import CheckpointError

FORMAT = "distillery-checkpoint"
# torch.save, pickle and other formats that unpickle on load: refused by name, never opened.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def save_checkpoint(stem: str | Path, model: nn.Module, metadata: dict[str, Any],
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``stem.safetensors`` (the model's weights only: ``state``, else its ``state_dict()``) and then
    ``stem.json``; returns the weights path.

    The JSON is written last, so its presence means the weights beside it are complete.

    Example::

        save_checkpoint(run_dir / "model", student, {"role": "distilled", ...})
    """
    stem = Path(stem)
    weights_path = stem.with_suffix(".safetensors")
    # Clone so tensors that share storage (tied weights) can be serialised.
    state = model.state_dict() if state is None else state
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in state.items()}
    atomic_write(weights_path, lambda p: save_file(tensors, str(p)))
    document = {"format": FORMAT, "version": 1, **metadata}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(document, indent=2))
    return weights_path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, ``x.safetensors``, ``x.json`` or ``x`` -> the stem ``x`` of an existing checkpoint."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is a pickle-based file ({path.suffix}); distillery never unpickles files, "
                              "since unpickling can run code: save the weights with safetensors (a distillery run "
                              "directory, or safetensors.torch.save_file) and point to that")
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(f"{path} holds no model.safetensors; is it a finished distillery run?")
        path = path / "model"
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    if not stem.with_suffix(".safetensors").is_file():
        raise CheckpointError(f"no checkpoint at {path}: {stem.with_suffix('.safetensors')} does not exist")
    if not stem.with_suffix(".json").is_file():
        raise CheckpointError(
            f"{stem.with_suffix('.safetensors')} has no {stem.with_suffix('.json').name} beside it, "
            "so it is not a finished distillery checkpoint"
        )
    return stem


def load_checkpoint_files(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights (safetensors: no code runs on load) and metadata of a checkpoint.

    Example::

        state, metadata = load_checkpoint_files("runs/teacher")
    """
    stem = resolve_checkpoint(path)
    json_path = stem.with_suffix(".json")
    try:
        metadata = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{json_path} is not valid JSON ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a distillery checkpoint (no \"format\": \"{FORMAT}\")")
    weights_path = stem.with_suffix(".safetensors")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path} is unreadable or corrupted ({error})") from None
    return state, metadata
