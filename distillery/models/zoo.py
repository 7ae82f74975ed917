"""Small classifiers for students and teachers: an MLP and a plain CNN.

Every model here ends in a bare `nn.Linear` named `classifier`, so the penultimate
embedding is always the input of `classifier` (a forward-pre hook can read it), and
intermediate features live under `features.<i>` for hook-based methods. Activations are
not in-place, so a tensor captured by a hook is never overwritten by the next layer.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import nn

from distillery.errors import ModelError


def require_positive_ints(name: str, values: Any, allow_empty: bool = False) -> list[int]:
    """Check that `values` is a list of positive ints (YAML gives lists) and return it as a list."""
    is_list = isinstance(values, (list, tuple))
    if not is_list or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ModelError(f"{name} must be a list of positive integers, got {values!r}")
    if not values and not allow_empty:
        raise ModelError(f"{name} must name at least one size, got an empty list")
    return list(values)


def require_int(name: str, value: Any, minimum: int) -> int:
    """Check that `value` is an int >= `minimum` (bools rejected: `True` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def require_dropout(value: Any) -> float:
    """Check that `value` is a probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ModelError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def require_image_shape(model_name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Check that `input_shape` is (channels, height, width) for a convolutional model."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ModelError(
            f"{model_name} needs input_shape (channels, height, width), got {shape}; "
            "use mlp for flat feature vectors"
        )
    require_positive_ints("input_shape", shape)
    return shape  # type: ignore[return-value]


def _flat_size(input_shape: Sequence[int]) -> int:
    size = 1
    for dim in require_positive_ints("input_shape", tuple(input_shape)):
        size *= dim
    return size


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: list[int] = [256, 128],  # noqa: B006 - never mutated; the default shows in signatures
    dropout: float = 0.0,
) -> nn.Module:
    """A flatten -> (Linear, ReLU[, Dropout]) x len(hidden) -> Linear classifier.

    Example: `mlp((1, 28, 28), 10, hidden=[512, 256])(torch.randn(4, 1, 28, 28)).shape == (4, 10)`.
    Hook paths: `features.0`, `features.1`, ... (one per hidden layer), `classifier`.
    """
    hidden = require_positive_ints("hidden", hidden, allow_empty=True)
    dropout = require_dropout(dropout)
    require_int("num_classes", num_classes, 1)
    width = _flat_size(input_shape)
    blocks = []
    for size in hidden:
        layers: list[nn.Module] = [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        width = size
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            features=nn.Sequential(*blocks),
            classifier=nn.Linear(width, num_classes),
        )
    )


def _conv_stage(in_channels: int, out_channels: int, convs: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        # A conv followed by BN needs no bias: BN's shift replaces it.
        channels_in = in_channels if index == 0 else out_channels
        layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
    # ceil_mode keeps odd sizes (7 -> 4) and turns 1x1 into 1x1, so 8x8 inputs survive
    # any number of stages instead of failing with "output size is too small".
    layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


def _check_cnn_options(batch_norm: Any, hidden: Any, convs_per_stage: Any) -> None:
    if not isinstance(batch_norm, bool):
        raise ModelError(f"batch_norm must be true or false, got {batch_norm!r}")
    require_int("hidden", hidden, 0)
    require_int("convs_per_stage", convs_per_stage, 1)


def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: list[int] = [32, 64],  # noqa: B006 - never mutated; the default shows in signatures
    batch_norm: bool = True,
    dropout: float = 0.0,
    hidden: int = 0,
    convs_per_stage: int = 1,
) -> nn.Module:
    """A plain CNN: per stage `convs_per_stage` x (3x3 conv[, BN], ReLU) then 2x2 max-pool.

    After the stages: global average pool, an optional hidden Linear+ReLU of size `hidden`,
    dropout, and a Linear `classifier`.
    Example: `cnn((1, 8, 8), 10, channels=[16, 32, 64])(torch.randn(2, 1, 8, 8)).shape == (2, 10)`.
    Hook paths: `features.0`, `features.1`, ... (one per stage), `head`, `classifier`.
    """
    in_channels, _, _ = require_image_shape("cnn", input_shape)
    channels = require_positive_ints("channels", channels)
    dropout = require_dropout(dropout)
    _check_cnn_options(batch_norm, hidden, convs_per_stage)
    require_int("num_classes", num_classes, 1)
    stages = []
    for out_channels in channels:
        stages.append(_conv_stage(in_channels, out_channels, convs_per_stage, batch_norm))
        in_channels = out_channels
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    width = channels[-1]
    if hidden > 0:
        head += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    if dropout > 0:
        head.append(nn.Dropout(dropout))
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*stages),
            head=nn.Sequential(*head),
            classifier=nn.Linear(width, num_classes),
        )
    )
