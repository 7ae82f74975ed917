"""The memory layout a frozen teacher's convolutions run fastest in."""
from __future__ import annotations

import torch
from torch import nn

from distillery.data.batch import model_logits


def prefer_channels_last(teacher: nn.Module, example: torch.Tensor) -> bool:
    """Store ``teacher``'s 4-D weights channels_last when it has any and its logits on ``example`` (a few samples,
    ``[B, C, H, W]``) stay the same; returns whether it did. Values are unchanged, only the layout: CPU convolutions
    with channels_last weights run in that layout whatever the inputs', which made the Fashion-MNIST teacher's
    forward pass about twice as fast (BENCHMARKS.md, "The live teacher"). A teacher whose forward cannot take it
    (``.view`` on a convolution's output) or whose logits move by more than 1e-4 is left as it was."""
    if example.dim() != 4 or not any(parameter.dim() == 4 for parameter in teacher.parameters()):
        return False
    with torch.no_grad():
        before = model_logits(teacher, example)
        teacher.to(memory_format=torch.channels_last)
        try:
            after = model_logits(teacher, example)
            same = after.shape == before.shape and torch.allclose(after.float(), before.float(), rtol=1e-4, atol=1e-4)
        except RuntimeError:  # a view of a tensor that is no longer contiguous
            same = False
    if not same:
        teacher.to(memory_format=torch.contiguous_format)
    return same
