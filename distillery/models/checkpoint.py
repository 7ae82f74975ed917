"""Rebuilding a model from one of our checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from torch import nn

from distillery.errors import CheckpointError, DistilleryError
from distillery.models.checkpoint_files import load_checkpoint_files
from distillery.models.factory import MODELS, build_model


def check_architecture_is_trusted(architecture: Any, path: str | Path, allow_factories: Collection[str]) -> None:
    """Refuse a checkpoint whose architecture names code the user has not named themselves.

    A checkpoint is a file from anyone; a config or a command line is the user's own. So a checkpoint
    may name a built-in architecture (``MODELS``), and a ``package.module:function`` factory only when
    ``allow_factories`` (what the user's config or command names) holds it: nothing is imported or
    called before this check. Raises CheckpointError naming the factory and how to allow it.
    """
    name = architecture.get("name") if isinstance(architecture, dict) else None
    if not isinstance(name, str) or ":" not in name or name in set(allow_factories):
        return
    raise CheckpointError(
        f"checkpoint {path} names the factory {name!r} as its architecture, and a checkpoint may name only "
        f"built-in architectures ({', '.join(MODELS.names())}); if you wrote that factory and trust it, allow it "
        f"with --allow-factory {name} (or allow_factories: [{name}] in the config)")


def load_model(path: str | Path, *, allow_factories: Collection[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Build the architecture recorded in a checkpoint's JSON and load its safetensors weights.

    ``path`` is a run directory, or a checkpoint's ``.safetensors`` / ``.json`` file. The JSON may
    name a built-in architecture, or a ``package.module:function`` factory listed in
    ``allow_factories`` (see :func:`check_architecture_is_trusted`); anything else is a CheckpointError.

    Example::

        student, metadata = load_model("runs/distilled")
        mine, metadata = load_model("runs/mine", allow_factories=["my_models:small_cnn"])
    """
    state, metadata = load_checkpoint_files(path)
    check_architecture_is_trusted(metadata.get("architecture"), path, allow_factories)
    try:
        model = build_model(metadata["architecture"], tuple(metadata["input_shape"]), int(metadata["num_classes"]))
    except KeyError as missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing} in its metadata") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} has malformed metadata ({error})") from None
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
