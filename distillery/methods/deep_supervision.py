"""Deep supervision as self-distillation: auxiliary heads on intermediate layers learn from the final head."""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from pydantic import Field

import torch
from torch import nn

from distillery.data.batch import Batch, model_logits
from distillery.errors import ConfigError, ModelError
from distillery.losses import hard_label_cross_entropy, soft_target_kl
from distillery.methods.base import METHODS, BuildContext, Method, MethodOptions, Needs, StepOutput
from distillery.models.hooks import capture_features, probe_shapes, resolve_module

# Heads average-pool 4-D features to at most this many cells a side. Global pooling (1 cell) throws away
# where things are, and a head on an early layer then cannot classify: on digits, a globally pooled head on
# a cnn's first stage stayed near chance (13% on the test set) while a 4 x 4 grid learns.
HEAD_GRID = 4


def auxiliary_head(path: str, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A linear classifier on a layer's output; [C, H, W] maps are average-pooled to a grid of at most 4 x 4 first."""
    if len(feature_shape) == 4:
        grid = (min(feature_shape[2], HEAD_GRID), min(feature_shape[3], HEAD_GRID))
        return nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
                             nn.Linear(feature_shape[1] * grid[0] * grid[1], num_classes))
    if len(feature_shape) == 2:
        return nn.Linear(feature_shape[1], num_classes)
    raise ModelError(f"student module {path!r} outputs {feature_shape[1:]}; an auxiliary head needs "
                     "convolutional ([C, H, W]) or flat ([features]) outputs: pick another layer")


class DeepSupervisionOptions(MethodOptions):
    label_weight: ClassVar[str | None] = "alpha"
    student_layers: list[str] = Field(..., description="student module paths that get an auxiliary head")
    temperature: float = Field(3.0, gt=0.0, description="the temperature of the final head's soft targets")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the heads' hard-label term")
    aux_weight: float = Field(1.0, ge=0.0, description="weight of the auxiliary heads' loss")

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        return {**super().keywords(context), "input_shape": context.input_shape,
                "label_smoothing": context.label_smoothing}


@METHODS.register("deep_supervision")
class DeepSupervision(Method):
    """Zhang et al. 2019, "Be Your Own Teacher": the student teaches its own intermediate layers.

    Each layer in ``student_layers`` gets an auxiliary head: a Linear to the classes, after
    average-pooling convolutional maps to a grid of at most 4 × 4 cells. The loss is

        CE(final) + aux_weight · Σ_k [alpha · CE(head_k) + (1 − alpha) · T² · KL(final/T ‖ head_k/T)]

    with the final head's logits detached in the KL term: the heads follow the final head,
    never the other way round, while their cross-entropy still shapes the shared layers.
    The paper's heads are small convolutional stacks and it adds a feature hint; linear heads
    on pooled features keep the method to the deep-supervision core. The heads belong to the method:
    they train with the student and are not in its checkpoint. ``input_shape`` (one sample's
    shape) sizes them with one dummy forward at build time. The true labels are required.

    Example::

        method = DeepSupervision(student, student_layers=["features.0", "features.1"], input_shape=(1, 8, 8))
    """

    Options = DeepSupervisionOptions
    # No outside teacher: the final head teaches; hooks on the student, so train.compile refuses it.
    needs = Needs(teacher=False, labels="required", hooks=True, data=frozenset({"images"}))

    def __init__(self, student: nn.Module, *, student_layers: Sequence[str],
                 input_shape: Sequence[int] | None = None, temperature: float = 3.0, alpha: float = 0.7,
                 aux_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(student)
        if isinstance(student_layers, str) or not student_layers:
            raise ConfigError(f"student_layers must be a non-empty list of module paths, e.g. ['features.0'], "
                              f"got {student_layers!r}")
        if input_shape is None:
            raise ConfigError("deep_supervision needs input_shape (one sample's shape) to size its heads")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; typical values are 1 to 20")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}; it weights the heads' hard-label term")
        if aux_weight < 0:
            raise ConfigError(f"aux_weight must be >= 0, got {aux_weight}")
        self.student_layers = list(student_layers)
        # Plain tuple, not submodules: registering the student's layers again would duplicate state_dict keys.
        self._layer_modules = tuple(resolve_module(student, path, "student") for path in self.student_layers)
        output_shape, feature_shapes = probe_shapes(student, self.student_layers, "student", input_shape)
        if output_shape is None or len(output_shape) != 2:
            raise ModelError(f"the student outputs {output_shape}, not [batch, classes] logits; "
                             "deep_supervision needs a classifier")
        self.heads = nn.ModuleList(auxiliary_head(path, shape, output_shape[1])
                                   for path, shape in zip(self.student_layers, feature_shapes))
        parameter = next(iter(student.parameters()), None)
        if parameter is not None:
            self.heads.to(parameter.device)
        self.temperature = temperature
        self.alpha = alpha
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing

    def step(self, batch: Batch) -> StepOutput:
        inputs, labels = batch.inputs, batch.labels
        if labels is None:
            raise ConfigError("method 'deep_supervision' needs labels: the final head learns from them; "
                              "train on labelled data")
        with capture_features({str(k): module for k, module in enumerate(self._layer_modules)}) as features:
            logits = model_logits(self.student, inputs)
        final = hard_label_cross_entropy(logits, labels, self.label_smoothing)
        # Detached: the heads learn from the final head, which must not bend towards them.
        soft_targets = logits.detach()
        aux = torch.zeros((), device=logits.device)
        aux_kd = torch.zeros((), device=logits.device)
        logs = {}
        for k, head in enumerate(self.heads):
            head_logits = head(features[str(k)])
            hard = hard_label_cross_entropy(head_logits, labels, self.label_smoothing)
            soft = soft_target_kl(head_logits, soft_targets, self.temperature)
            aux = aux + self.alpha * hard + (1.0 - self.alpha) * soft
            aux_kd = aux_kd + soft.detach()
            logs[f"aux{k + 1}_accuracy"] = (head_logits.detach().argmax(dim=-1) == labels).float().mean()
        loss = final + self.aux_weight * aux
        return StepOutput(loss=loss, logits=logits,
                          logs={"ce": final.detach(), "aux": aux.detach(), "aux_kd": aux_kd, **logs})
