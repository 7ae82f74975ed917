"""Rebuilding a model from one of our checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distillery.engine.checkpoint import load_checkpoint_files
from distillery.errors import CheckpointError, DistilleryError
from distillery.models.factory import build_model


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the architecture recorded in a checkpoint's JSON and load its safetensors weights.

    ``path`` is a run directory, or a checkpoint's ``.safetensors`` / ``.json`` file.

    Example::

        student, metadata = load_model("runs/distilled")
    """
    state, metadata = load_checkpoint_files(path)
    try:
        model = build_model(metadata["architecture"], tuple(metadata["input_shape"]), int(metadata["num_classes"]))
    except KeyError as missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing} in its metadata") from None
    except DistilleryError as error:
        raise CheckpointError(f"checkpoint {path}: its architecture cannot be built ({error})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # The first line only names the model class; the next one names the first tensor that does not fit.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"the weights in {path} do not fit the architecture in its metadata ({detail})") from None
    return model, metadata
