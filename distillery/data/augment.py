"""Batched image augmentations made of torch ops: no per-sample Python, any device.

Random draws come from the `torch.Generator` passed in (on its own device) and are then
moved to the images' device, so a CPU generator drives augmentation of CUDA batches too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distillery.errors import ConfigError


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±`max_shift` pixels in x and y, filling with zeros.

    The same as a random crop with zero padding `max_shift`. Example:
    `shifted = random_shift(batch, 2, torch.Generator().manual_seed(0))`
    """
    _check_images(images)
    _check_non_negative("max_shift", max_shift)
    return _random_padded_crop(images, max_shift, generator)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image with `padding` zeros, then crop back to its size at a random offset per image.

    Example: `cropped = random_crop(batch, 4, torch.Generator().manual_seed(0))`
    """
    _check_images(images)
    _check_non_negative("padding", padding)
    return _random_padded_crop(images, padding, generator)


def horizontal_flip(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with `probability`. Example: `horizontal_flip(batch, 0.5, generator)`."""
    _check_images(images)
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"flip probability {probability} is out of range; use a value in [0, 1]")
    draws = torch.rand(len(images), generator=generator, device=generator.device)
    flip = (draws < probability).to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def _random_padded_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    if padding == 0:
        return images.clone()
    batch, _, height, width = images.shape
    # Offset 0 shows the top-left padding, 2 * padding the bottom-right; padding is the identity.
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator, device=generator.device)
    offsets = offsets.to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # [B, W]
    # Gather rows then columns: two small index ops instead of one [B, C, H, W] index grid.
    rows = rows[:, None, :, None].expand(-1, images.shape[1], -1, padded.shape[-1])
    picked_rows = padded.gather(2, rows)  # [B, C, H, W + 2p]
    cols = cols[:, None, None, :].expand(-1, images.shape[1], height, -1)
    return picked_rows.gather(3, cols)  # [B, C, H, W]


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ConfigError(
            f"augmentation needs image inputs [N, C, H, W], got shape {tuple(images.shape)}; "
            "turn augmentation off for tabular data"
        )


def _check_non_negative(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"augmentation {name} must be a whole number >= 0, got {value!r}")


class Augmentation:
    """Shift, then pad-and-crop, then horizontal flip (p = 0.5), each only when switched on.

    Example::

        augment = Augmentation(crop_padding=4, flip=True)
        batch = augment(batch, torch.Generator().manual_seed(epoch))
    """

    def __init__(self, shift: int = 0, crop_padding: int = 0, flip: bool = False) -> None:
        _check_non_negative("shift", shift)
        _check_non_negative("crop_padding", crop_padding)
        self.shift = shift
        self.crop_padding = crop_padding
        self.flip = bool(flip)

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.crop_padding > 0 or self.flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Identity without a shape check, so a disabled augmentation is harmless on tabular data.
        if not self.enabled:
            return images
        _check_images(images)
        if self.shift:
            images = random_shift(images, self.shift, generator)
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, generator)
        if self.flip:
            images = horizontal_flip(images, 0.5, generator)
        return images

    def __repr__(self) -> str:
        return f"Augmentation(shift={self.shift}, crop_padding={self.crop_padding}, flip={self.flip})"
