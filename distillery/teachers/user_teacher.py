"""A teacher trained outside distillery: the user's own PyTorch model (a factory and a file of weights)."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from distillery.errors import ModelError
from distillery.models import build_model
from distillery.teachers.frozen import freeze

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``torch.save``-d file read with ``weights_only=True`` (tensors
    and plain containers only: nothing else is unpickled). A checkpoint that wraps the state dict under
    ``"state_dict"`` or ``"model"`` is unwrapped. Raises ModelError naming the file and the fix.

    Example: ``state = read_weights("teacher.pt")``
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"teacher weights {path} do not exist; give the file saved with torch.save or safetensors")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelError(f"{path} is not a readable safetensors file ({error})") from None
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ModelError(f"teacher weights {path}: use .safetensors or a torch.save-d state dict "
                         f"({', '.join(STATE_DICT_SUFFIXES)})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ModelError(f"{path} holds more than tensors or is damaged ({first[:160]}); save "
                         "model.state_dict() with torch.save, or with safetensors") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"{path} is not a state dict (a mapping of names to tensors); save model.state_dict()")
    return dict(state)


def load_user_teacher(factory: str, weights: str | Path, *, options: Mapping[str, Any] | None = None,
                      input_shape: Sequence[int], num_classes: int, class_names: Sequence[str] | None = None,
                      preprocessing: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model, built by ``factory`` (``package.module:function`` with ``options`` as keyword arguments;
    ``input_shape`` and ``num_classes`` are passed to a factory that names them), its ``weights`` loaded
    strictly, frozen; and metadata like a checkpoint's (``preprocessing``: the mean and std its inputs need,
    None for raw inputs; ``class_names`` when it predicts other classes than the data's).

    Raises ModelError for a factory that fails, weights that do not fit (the first differing keys named).

    Example::

        teacher, metadata = load_user_teacher("my_models:make_teacher", "teacher.pt", input_shape=(1, 28, 28),
                                              num_classes=10, preprocessing={"mean": [0.286], "std": [0.353]})
    """
    classes = len(class_names) if class_names else num_classes
    architecture = {"name": factory, **(options or {})}
    model = build_model(architecture, input_shape, classes)
    state = read_weights(weights)
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong = [key for key in own if key in state and tuple(own[key].shape) != tuple(state[key].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:3])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)) if keys]
        raise ModelError(f"{weights} does not fit the model {factory} builds ({'; '.join(parts)}); give the "
                         "factory the options the teacher was trained with")
    model.load_state_dict(state, strict=True)
    metadata = {"architecture": architecture, "input_shape": list(input_shape), "num_classes": classes,
                "preprocessing": dict(preprocessing) if preprocessing is not None else None}
    if class_names:
        metadata["class_names"] = [str(name) for name in class_names]
    return freeze(model), metadata
