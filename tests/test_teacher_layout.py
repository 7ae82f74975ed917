"""A frozen teacher's convolutions in channels_last: the same logits, and left alone where its forward cannot take it."""
from __future__ import annotations

import torch
from torch import nn

from distillery.models import build_model
from distillery.teachers import freeze
from distillery.teachers.layout import prefer_channels_last


class ViewsItsFeatures(nn.Module):
    """A model whose forward needs contiguous activations (``.view`` after a convolution), as older code has."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.conv(inputs)
        return self.head(features.view(features.shape[0], -1))


def test_a_convolutional_teacher_runs_channels_last_with_the_same_logits():
    torch.manual_seed(0)
    teacher = freeze(build_model({"name": "cnn", "channels": [4, 8], "hidden": 16, "batch_norm": True}, (1, 8, 8), 3))
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        before = teacher(images)
    assert prefer_channels_last(teacher, images[:2])
    convolutions = [m.weight for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert not convolutions[1].is_contiguous()  # one input channel is both layouts; the second convolution has 4
    with torch.no_grad():
        assert torch.allclose(teacher(images), before, atol=1e-5)


def test_a_teacher_that_views_its_features_or_has_no_convolutions_keeps_its_layout():
    torch.manual_seed(0)
    images = torch.randn(2, 1, 8, 8)
    viewing = freeze(ViewsItsFeatures())
    assert not prefer_channels_last(viewing, images)
    assert viewing.conv.weight.is_contiguous()
    with torch.no_grad():
        viewing(images)  # still runs
    mlp = freeze(build_model({"name": "mlp", "hidden": [8]}, (1, 8, 8), 3))
    assert not prefer_channels_last(mlp, images)
