"""Feature distillation: FitNets hints and attention transfer, on features read by forward hooks."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError, ModelError
from distillery.losses import (
    attention_transfer,
    hard_label_cross_entropy,
    hint_mse,
    pool_to_common_size,
    soft_target_kl,
)
from distillery.methods.base import METHODS, Method, StepOutput
from distillery.models.hooks import capture_features, probe_feature_shapes, resolve_module


def _non_negative(name: str, value: float) -> float:
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return float(value)


class FeatureMethod(Method):
    """alpha · CE + feature_weight · Σ feature_loss(student layer, teacher layer) [+ kd_weight · KD].

    Subclasses set ``feature_log`` and implement :meth:`feature_loss`. Features are captured
    with forward hooks only during :meth:`step`; the models are never modified. The teacher's
    outputs may come from a cache instead (:meth:`use_precomputed_teacher_outputs`): then the
    teacher is not run at all.
    """

    uses_feature_hooks = True  # train.compile refuses such a method (see compile_student)

    feature_log = "feature"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_layers: Sequence[str],
                 teacher_layers: Sequence[str], feature_weight: float, alpha: float, label_smoothing: float,
                 kd_weight: float, temperature: float) -> None:
        super().__init__(student)
        self.add_teacher("teacher", teacher)
        if isinstance(student_layers, str) or isinstance(teacher_layers, str):
            raise ConfigError("student_layers and teacher_layers must be lists of module paths, e.g. ['features.1']")
        if not student_layers or len(student_layers) != len(teacher_layers):
            raise ConfigError(f"student_layers {list(student_layers)} and teacher_layers {list(teacher_layers)} "
                              "must be non-empty and of the same length: one teacher layer per student layer")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; typical values are 1 to 20")
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        # Plain tuples, not submodules: registering them again would duplicate state_dict keys.
        self._student_modules = tuple(resolve_module(student, path, "student") for path in self.student_layers)
        self._teacher_modules = tuple(resolve_module(teacher, path, "teacher") for path in self.teacher_layers)
        self.feature_weight = _non_negative("the feature loss weight", feature_weight)
        self.alpha = _non_negative("alpha", alpha)
        self.kd_weight = _non_negative("kd_weight", kd_weight)
        self.label_smoothing = label_smoothing
        self.temperature = temperature
        self.precomputed_teacher_logits: Any = None
        self.precomputed_teacher_features: list[Any] | None = None

    def use_precomputed_teacher_outputs(self, logits: Any, features: Mapping[str, Any]) -> None:
        """Look the teacher's logits and its features up by sample index instead of running it.

        ``features`` maps each of ``teacher_layers`` to anything indexable by a tensor of indices (a tensor,
        a cache's FeatureTable); ``logits`` likewise, read only when ``kd_weight`` > 0.

        Example::

            method.use_precomputed_teacher_outputs(outputs.logits, outputs.features)
        """
        missing = [path for path in self.teacher_layers if path not in features]
        if missing:
            raise ValueError(f"no precomputed teacher features for {missing}")  # a bug: the plan names the layers
        self.precomputed_teacher_logits = logits
        self.precomputed_teacher_features = [features[path] for path in self.teacher_layers]

    def teacher_outputs(self, inputs: torch.Tensor,
                        indices: torch.Tensor | None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The teacher's logits (None when cached and unused) and its features at ``teacher_layers``."""
        if self.precomputed_teacher_features is None:
            hooks = {str(i): module for i, module in enumerate(self._teacher_modules)}
            with torch.no_grad(), capture_features(hooks) as captured:
                logits = self.teacher(inputs)
            return logits, [captured[str(i)] for i in range(len(hooks))]
        if indices is None:
            raise ValueError("precomputed teacher outputs need the batches' sample indices")
        features = [table[indices].to(inputs.device, torch.float32) for table in self.precomputed_teacher_features]
        if self.kd_weight == 0:
            return None, features
        return self.precomputed_teacher_logits[indices].to(inputs.device, torch.float32), features

    def feature_loss(self, index: int, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, batch: Batch) -> StepOutput:
        inputs, labels, indices = batch.inputs, batch.labels, batch.indices
        teacher_logits, teacher_features = self.teacher_outputs(inputs, indices)
        student_hooks = {str(i): module for i, module in enumerate(self._student_modules)}
        with capture_features(student_hooks) as student_features:
            student_logits = self.student(inputs)
        feature = sum(self.feature_loss(i, student_features[str(i)], teacher_features[i])
                      for i in range(len(self.student_layers)))
        loss = self.feature_weight * feature
        logs = {self.feature_log: feature.detach()}
        if labels is not None:  # logged even at alpha = 0, to watch accuracy-related progress
            hard = hard_label_cross_entropy(student_logits, labels, self.label_smoothing)
            loss = loss + self.alpha * hard
            logs["ce"] = hard.detach()
        if self.kd_weight > 0:
            soft = soft_target_kl(student_logits, teacher_logits, self.temperature)
            loss = loss + self.kd_weight * soft
            logs["kd"] = soft.detach()
        return StepOutput(loss=loss, logits=student_logits, logs=logs, teacher_logits=teacher_logits)


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
