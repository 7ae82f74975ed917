"""FitNets: a student layer, through a learned adapter, regresses a teacher layer's features (hints)."""
from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from torch import nn

from distillery.errors import ConfigError, ModelError
from distillery.losses import hint_mse, pool_to_common_size
from distillery.methods.base import METHODS
from distillery.methods.teacher_features import FeatureMethod, FeatureOptions
from distillery.models.hooks import probe_feature_shapes


class FeatureHintsOptions(FeatureOptions):
    student_layer: str = Field(..., description="the student module whose output is hinted, e.g. features.0")
    teacher_layer: str = Field(..., description="the teacher module giving the hint, e.g. features.1")
    hint_weight: float = Field(100.0, ge=0.0, description="weight of the hint loss")

    def teacher_layers_read(self) -> list[str]:
        return [self.teacher_layer]


@METHODS.register("fitnet")
class FeatureHints(FeatureMethod):
    """Romero et al. 2015, FitNets: the student's ``student_layer``, through a trainable adapter,
    regresses the teacher's ``teacher_layer``.


    The adapter is a 1×1 Conv2d when both features are 4-D and a Linear when both are 2-D.
    It belongs to the method (trained with the student, never saved in the student's
    checkpoint). When spatial sizes differ, the larger map (student's or teacher's) is
    adaptive-average-pooled to the smaller size. ``input_shape`` is one sample's shape, used
    for one dummy forward at build time to learn the feature shapes. The hint weight 100
    is the reference recipe's, tuned for the mean-squared error :func:`hint_mse` returns.

    Example::

        method = FeatureHints(student, teacher, student_layer="features.0", teacher_layer="features.1",
                              input_shape=(1, 8, 8))
    """

    Options = FeatureHintsOptions
    feature_log = "hint"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_layer: str, teacher_layer: str,
                 input_shape: Sequence[int] | None = None, hint_weight: float = 100.0, alpha: float = 1.0,
                 label_smoothing: float = 0.0, kd_weight: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__(student, teacher, student_layers=[student_layer], teacher_layers=[teacher_layer],
                         feature_weight=hint_weight, alpha=alpha, label_smoothing=label_smoothing,
                         kd_weight=kd_weight, temperature=temperature)
        if input_shape is None:
            raise ConfigError("fitnet needs input_shape (one sample's shape) to size its adapter")
        (student_shape,) = probe_feature_shapes(student, [student_layer], "student", input_shape)
        (teacher_shape,) = probe_feature_shapes(teacher, [teacher_layer], "teacher", input_shape)
        if len(student_shape) == len(teacher_shape) == 4:
            self.adapter: nn.Module = nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1)
        elif len(student_shape) == len(teacher_shape) == 2:
            self.adapter = nn.Linear(student_shape[1], teacher_shape[1])
        else:
            raise ModelError(f"student {student_layer!r} outputs {student_shape[1:]} but teacher {teacher_layer!r} "
                             f"outputs {teacher_shape[1:]}; the two layers must both be convolutional "
                             "([C, H, W]) or both fully connected ([features])")
        parameter = next(iter(student.parameters()), None)
        if parameter is not None:
            self.adapter.to(parameter.device)

    def feature_loss(self, index: int, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        student_features, teacher_features = pool_to_common_size(student_features, teacher_features)
        return hint_mse(self.adapter(student_features), teacher_features)
