"""What feature distillation methods share (fitnet, attention): teacher and student features read by forward hooks at
named layers, or the teacher's from a cache by sample index, and their common options."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

from pydantic import Field

import torch
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.losses import hard_label_cross_entropy, soft_target_kl
from distillery.methods.base import BuildContext, Method, MethodOptions, Needs, StepOutput
from distillery.models.hooks import capture_features, resolve_module


def _non_negative(name: str, value: float) -> float:
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return float(value)


class FeatureOptions(MethodOptions):
    """The options every feature method takes besides its layers and the weight of its feature loss."""

    label_weight: ClassVar[str | None] = "alpha"
    alpha: float = Field(1.0, ge=0.0, description="weight of the hard-label term")
    kd_weight: float = Field(0.0, ge=0.0, description="weight of an added Hinton KD term")
    temperature: float = Field(4.0, gt=0.0, description="the added KD term's temperature")

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        # Adapters are sized with one dummy forward of a sample's shape.
        return {**super().keywords(context), "input_shape": context.input_shape,
                "label_smoothing": context.label_smoothing}

    def in_ensemble_member(self, index: int) -> "FeatureOptions":
        paths = {name: _in_member(getattr(self, name), index) for name in type(self).model_fields
                 if name.startswith("teacher_layer")}
        return self.model_copy(update=paths)


def _in_member(paths: str | list[str], index: int) -> str | list[str]:
    if isinstance(paths, list):
        return [f"members.{index}.{path}" for path in paths]
    return f"members.{index}.{paths}"


class FeatureMethod(Method):
    """alpha · CE + feature_weight · Σ feature_loss(student layer, teacher layer) [+ kd_weight · KD].

    Subclasses set ``feature_log`` and implement :meth:`feature_loss`. Features are captured
    with forward hooks only during :meth:`step`; the models are never modified. The teacher's
    outputs may come from a cache instead (:meth:`use_precomputed_teacher_outputs`): then the
    teacher is not run at all.
    """

    # Hooks on the student: train.compile refuses such a method (see compile_student).
    needs = Needs(teacher=True, teacher_features=True, hooks=True, data=frozenset({"images"}))

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
