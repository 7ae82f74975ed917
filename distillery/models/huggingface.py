"""Hugging Face image classifiers (``transformers``) as plain modules: pixels ``[B, C, H, W]`` in, logits out.

Teachers come from a local folder written by ``save_pretrained`` (never a hub: the libraries' offline switches
are set, ``local_files_only`` is passed and no remote code is trusted); students are smaller configs of the same
family, built from a config dict or a folder's config.json with overrides (fewer layers, a narrower width).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillery.errors import ModelError
from distillery.user_code import first_line

# Default label names transformers gives a config without its own ("LABEL_0", ...): no class names at all.
_DEFAULT_LABEL = "LABEL_"


def _offline() -> None:
    # Nothing is ever fetched at run time: a folder that lacks a file is an error, not a download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class HFImageClassifier(nn.Module):
    """A ``transformers`` image classifier called with one pixel tensor ``[B, C, H, W]``; returns logits ``[B, K]``.

    Inputs of another size are resized (bilinear) to the model's ``image_size``; grey inputs are repeated to the
    model's channels. The wrapped model is ``self.model``: its state-dict keys are prefixed ``model.``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        size = getattr(model.config, "image_size", None)
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size) if size else None
        self.channels = getattr(model.config, "num_channels", None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels and pixel_values.shape[1] == 1 and self.channels > 1:
            pixel_values = pixel_values.expand(-1, self.channels, -1, -1)
        if self.image_size and tuple(pixel_values.shape[-2:]) != self.image_size:
            pixel_values = F.interpolate(pixel_values, size=self.image_size, mode="bilinear", align_corners=False)
        return self.model(pixel_values=pixel_values).logits


def huggingface(input_shape: Sequence[int], num_classes: int, *, base: str | None = None,
                config: dict[str, Any] | None = None, **overrides: Any) -> HFImageClassifier:
    """A fresh image classifier of a ``transformers`` family: the config of the folder ``base`` (its config.json)
    or the dict ``config`` (with ``model_type``), changed by ``overrides`` (e.g. ``num_hidden_layers: 2``), for
    ``input_shape`` [C, H, W] and ``num_classes``. Raises ModelError naming what is missing or wrong.

    Example: ``student = huggingface((3, 32, 32), 10, base="teachers/vit", num_hidden_layers=2, hidden_size=96)``
    """
    _offline()
    from transformers import AutoConfig, AutoModelForImageClassification

    if (base is None) == (config is None):
        raise ModelError("a huggingface model needs exactly one of base (a folder with config.json) or config "
                         "(a dict with model_type)")
    try:
        if base is not None:
            settings = AutoConfig.from_pretrained(base, local_files_only=True, trust_remote_code=False)
        else:
            settings = AutoConfig.for_model(**config)
        for key, value in overrides.items():
            setattr(settings, key, value)
        settings.num_labels = num_classes
        settings.num_channels = input_shape[0]
        model = AutoModelForImageClassification.from_config(settings)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"cannot build a huggingface image classifier from {base or config} "
                         f"({first_line(error)})") from None
    return HFImageClassifier(model)


def load_pretrained_classifier(folder: str | Path) -> tuple[HFImageClassifier, dict[str, Any]]:
    """The classifier saved in ``folder`` (``save_pretrained``) and what it records: its input pipeline (the mean
    and std of its preprocessor_config.json, None when it has none), its class names (unless transformers'
    defaults), its input shape. Raises ModelError for a folder that is not one.

    Example: ``teacher, metadata = load_pretrained_classifier("teachers/vit-fashion")``
    """
    _offline()
    from transformers import AutoModelForImageClassification

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} holds no config.json; give a folder written by save_pretrained")
    try:
        # safetensors only: a pytorch_model.bin is a pickle, and a folder may come from anyone.
        model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True,
                                                                trust_remote_code=False, use_safetensors=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"transformers cannot load {folder} as an image classifier from safetensors weights "
                         f"({first_line(error)}); save it with save_pretrained(safe_serialization=True)") from None
    wrapped = HFImageClassifier(model.eval())
    labels = [model.config.id2label[index] for index in sorted(model.config.id2label)]
    metadata = {"architecture": {"name": "huggingface", "base": str(folder)},
                "num_classes": len(labels), "preprocessing": _preprocessing(folder)}
    if not all(str(label).startswith(_DEFAULT_LABEL) for label in labels):
        metadata["class_names"] = [str(label) for label in labels]
    return wrapped, metadata


def _preprocessing(folder: Path) -> dict[str, list[float]] | None:
    """The normalisation of the folder's preprocessor_config.json (read as data), or None."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"{path} is not readable JSON ({error})") from None
    if not settings.get("do_normalize", True) or "image_mean" not in settings or "image_std" not in settings:
        return None
    return {"mean": [float(value) for value in settings["image_mean"]],
            "std": [float(value) for value in settings["image_std"]]}
