"""Function matching (Beyer et al. 2022): the student matches the teacher's function on identical mixed views."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

import torch
from torch import nn

from distillery.data.batch import Batch, counted_positions, model_logits
from distillery.errors import ConfigError
from distillery.losses import soft_target_kl
from distillery.methods.base import METHODS, Method, MethodOptions, Needs, StepOutput

MIXES = ("mixup", "cutmix", "none")


def mixup(inputs: torch.Tensor) -> torch.Tensor:
    """Each sample blended with another of the batch: ``λ·x + (1 − λ)·x[perm]``, ``λ ~ U[0, 1]`` per sample.

    The weight is uniform on [0, 1], as Beyer et al. draw it for function matching, not Beta(α, α). Draws
    come from torch's global generator, whose state a saved training state restores. Shape ``[B, ...]``.
    """
    weights = torch.rand(inputs.shape[0], *([1] * (inputs.dim() - 1)), device=inputs.device, dtype=inputs.dtype)
    partners = inputs[torch.randperm(inputs.shape[0], device=inputs.device)]
    return weights * inputs + (1 - weights) * partners


def cutmix(inputs: torch.Tensor) -> torch.Tensor:
    """Each image ``[B, C, H, W]`` with a rectangle pasted from another of the batch; the rectangle's area share is
    ``U[0, 1]`` and its place uniform (Yun et al. 2019), one rectangle for the batch."""
    if inputs.dim() != 4:
        raise ConfigError(f"cutmix pastes rectangles of images [B, C, H, W]; these inputs are {tuple(inputs.shape)}: "
                          "use mix: mixup")
    height, width = inputs.shape[-2:]
    share = float(torch.rand(()))
    cut_h, cut_w = round(height * share ** 0.5), round(width * share ** 0.5)
    top = int(torch.randint(0, height - cut_h + 1, ()))
    left = int(torch.randint(0, width - cut_w + 1, ()))
    partners = inputs[torch.randperm(inputs.shape[0], device=inputs.device)]
    mixed = inputs.clone()
    mixed[..., top:top + cut_h, left:left + cut_w] = partners[..., top:top + cut_h, left:left + cut_w]
    return mixed


class FunctionMatchingOptions(MethodOptions):
    temperature: float = Field(1.0, gt=0.0, description="the temperature both distributions are softened at")
    mix: Literal["mixup", "cutmix", "none"] = Field("mixup", description="how a batch is mixed before teacher and "
                                                                          "student see it")

    def view_mix(self) -> str | None:
        return None if self.mix == "none" else self.mix


@METHODS.register("function_matching")
class FunctionMatching(Method):
    """Beyer et al., "Knowledge distillation: A good teacher is patient and consistent" (CVPR 2022).

    Teacher and student see the identical view of every sample: the data's augmentation (``data.augment``) and
    then ``mix`` over the batch (mixup with a uniform weight, or cutmix); the loss is the soft-target KL at
    ``temperature`` (times T²) alone, with no label term. The teacher therefore runs live on every fresh view,
    without gradients and in eval mode; long schedules are where the method pays.

    Example::

        method = FunctionMatching(student, teacher, temperature=1.0, mix="mixup")
    """

    Options = FunctionMatchingOptions
    needs = Needs(teacher=True, teacher_logits=True, data=frozenset({"images"}))

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float = 1.0, mix: str = "mixup") -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}; function matching uses 1")
        if mix not in MIXES:
            raise ConfigError(f"mix {mix!r} is not one of {', '.join(MIXES)}")
        super().__init__(student)
        self.add_teacher("teacher", teacher)
        self.temperature = temperature
        self.mix = mix
        self.precomputed_teacher_logits = None

    @property
    def mixes_batches(self) -> bool:
        """Whether each training batch is mixed anew, so a teacher's outputs on the plain samples would be wrong."""
        return self.mix != "none"

    def use_precomputed_teacher_logits(self, logits) -> None:
        """Read the teacher's logits by sample index from cached views (``distill.teacher_views``): the batches are
        then those views, already augmented and mixed, and are not mixed again."""
        self.precomputed_teacher_logits = logits

    def view(self, inputs: torch.Tensor) -> torch.Tensor:
        """The batch as both models see it: mixed while training (unless its views come mixed from the cache), as
        it is in eval mode."""
        if not self.training or self.mix == "none" or self.precomputed_teacher_logits is not None:
            return inputs
        if isinstance(inputs, Mapping):
            raise ConfigError("function matching mixes input tensors; these inputs are a mapping (tokens): "
                              "set distill.mix: none")
        return mixup(inputs) if self.mix == "mixup" else cutmix(inputs)

    def step(self, batch: Batch) -> StepOutput:
        inputs = self.view(batch.inputs)
        if self.precomputed_teacher_logits is not None:
            if batch.indices is None:
                raise ValueError("cached teacher views need the batches' sample indices")
            teacher_logits = self.precomputed_teacher_logits[batch.indices].to(batch.device, torch.float32)
        else:
            with torch.no_grad():
                teacher_logits = model_logits(self.teacher, inputs)
        student_logits = model_logits(self.student, inputs)
        student_rows, teacher_rows = counted_positions(batch.mask, student_logits, teacher_logits)
        loss = soft_target_kl(student_rows, teacher_rows, self.temperature)
        return StepOutput(loss=loss, logits=student_logits, logs={"kd": loss.detach()}, teacher_logits=teacher_logits)
