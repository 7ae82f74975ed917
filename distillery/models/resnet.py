"""A small CIFAR-style ResNet (He et al., 2016, section 4.2) for 8x8 to 32x32 images."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn

from distillery.models.zoo import require_image_shape, require_int, require_positive_ints


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv here is followed by BatchNorm, whose shift replaces it.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection; a 1x1 conv+BN projects the
    shortcut when the stride or the channel count changes.

    Example: `BasicBlock(16, 32, stride=2)(torch.randn(1, 16, 8, 8)).shape == (1, 32, 4, 4)`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add: `inputs` may be a feature another hook has captured.
        return self.relu(out + self.shortcut(inputs))


class ResNet(nn.Module):
    """Stem, `layer1..layerN` of BasicBlocks, global average pool, `classifier`.

    Built by `resnet(...)`; the penultimate embedding is the input of `classifier`.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks_per_stage: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(conv=_conv3x3(in_channels, widths[0]), bn=nn.BatchNorm2d(widths[0]), relu=nn.ReLU())
        )
        channels = widths[0]
        self.stage_names: list[str] = []
        for index, width in enumerate(widths):
            # The first stage keeps the resolution: the stem has no stride, as in CIFAR ResNets.
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(channels, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(blocks_per_stage - 1)]
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            channels = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch, so every block starts as the identity
        # (Goyal et al., 2017); small ResNets train noticeably faster from it.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.stem(inputs)
        for name in self.stage_names:
            out = getattr(self, name)(out)
        return self.classifier(torch.flatten(self.pool(out), 1))


def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    widths: list[int] = [16, 32, 64],  # noqa: B006 - never mutated; the default shows in signatures
    blocks_per_stage: int = 2,
) -> nn.Module:
    """A CIFAR-style ResNet: 3x3 stem, one stage per width (stride 2 from the second on), classifier.

    The defaults give ResNet-14 (2 blocks x 3 stages x 2 convs + stem + classifier); use
    `blocks_per_stage=3` for ResNet-20. Works on 8x8 up to 32x32 and larger inputs.
    Example: `resnet((3, 32, 32), 10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)`.
    Hook paths: `stem`, `layer1`, `layer2.0`, ..., `classifier`.
    """
    in_channels, _, _ = require_image_shape("resnet", input_shape)
    widths = require_positive_ints("widths", widths)
    require_int("blocks_per_stage", blocks_per_stage, 1)
    require_int("num_classes", num_classes, 1)
    return ResNet(in_channels, num_classes, widths, blocks_per_stage)
