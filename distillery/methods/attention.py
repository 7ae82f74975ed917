"""Attention transfer: the student matches the normalised spatial attention maps of paired teacher layers."""
from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from torch import nn

from distillery.errors import ConfigError, ModelError
from distillery.losses import attention_transfer
from distillery.methods.base import METHODS
from distillery.methods.teacher_features import FeatureMethod, FeatureOptions
from distillery.models.hooks import probe_feature_shapes


class AttentionTransferOptions(FeatureOptions):
    student_layers: list[str] = Field(..., description="student module paths, e.g. [features.0, features.1]")
    teacher_layers: list[str] = Field(..., description="teacher module paths, one per student layer")
    at_weight: float = Field(1000.0, ge=0.0, description="weight of the attention loss")
    p: float = Field(2.0, gt=0.0, description="exponent of the attention map")

    def teacher_layers_read(self) -> list[str]:
        return list(self.teacher_layers)


@METHODS.register("attention")
class AttentionTransfer(FeatureMethod):
    """Zagoruyko & Komodakis 2017: match the normalised spatial attention maps of paired layers.

    Needs no adapter: attention maps have no channel dimension. The loss is summed over the
    layer pairs. ``input_shape``, when given, checks at build time that every layer outputs
    4-D features. The default weight 1000 with p = 2 is the reference recipe's.

    Example::

        method = AttentionTransfer(student, teacher, student_layers=["features.0"],
                                   teacher_layers=["features.1"], input_shape=(1, 8, 8))
    """

    Options = AttentionTransferOptions
    feature_log = "at"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_layers: Sequence[str],
                 teacher_layers: Sequence[str], input_shape: Sequence[int] | None = None, at_weight: float = 1000.0,
                 p: float = 2.0, alpha: float = 1.0, label_smoothing: float = 0.0, kd_weight: float = 0.0,
                 temperature: float = 4.0) -> None:
        super().__init__(student, teacher, student_layers=student_layers, teacher_layers=teacher_layers,
                         feature_weight=at_weight, alpha=alpha, label_smoothing=label_smoothing,
                         kd_weight=kd_weight, temperature=temperature)
        if p <= 0:
            raise ConfigError(f"p must be > 0, got {p}; the paper uses 2")
        self.p = p
        if input_shape is not None:
            for role, model, paths in (("student", student, self.student_layers),
                                       ("teacher", teacher, self.teacher_layers)):
                for path, shape in zip(paths, probe_feature_shapes(model, paths, role, input_shape)):
                    if len(shape) != 4:
                        raise ModelError(f"{role} module {path!r} outputs {shape[1:]}, not [C, H, W]; "
                                         "attention transfer needs convolutional feature maps")

    def feature_loss(self, index: int, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        if student_features.dim() != 4 or teacher_features.dim() != 4:
            raise ModelError(f"attention transfer needs [B, C, H, W] features; layers {self.student_layers[index]!r} "
                             f"and {self.teacher_layers[index]!r} give {tuple(student_features.shape)} and "
                             f"{tuple(teacher_features.shape)}")
        return attention_transfer(student_features, teacher_features, self.p)
