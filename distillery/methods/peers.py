"""What the online methods share (mutual, online): models trained from scratch together, each learning from the
others as they learn, and their common options."""
from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

import torch
from torch import nn

from distillery.data.batch import Inputs, model_logits
from distillery.errors import ConfigError, ModelError
from distillery.losses import hard_label_cross_entropy, soft_target_kl
from distillery.methods.base import Method, MethodOptions, Needs, StepOutput


class PeerOptions(MethodOptions):
    """The options of methods whose models all train from scratch: the soft term's temperature, the hard-label
    weight."""

    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard-label term")


def model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A model spec (like model:) for a model trained beside the student: it must name an architecture."""
    if not isinstance(spec.get("name"), str):
        raise ValueError("needs a 'name' (mlp, cnn, resnet or package.module:function)")
    return spec


def _check_weights(temperature: float, alpha: float) -> None:
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}; typical values are 1 to 4")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}; it weights the hard-label term")


def _same_classes(student_logits: torch.Tensor, other_logits: torch.Tensor, name: str) -> None:
    if other_logits.shape != student_logits.shape:
        raise ModelError(f"{name} outputs {tuple(other_logits.shape[1:])} but the student outputs "
                         f"{tuple(student_logits.shape[1:])}; models trained together must predict the same classes")


def _needs_labels(labels: torch.Tensor | None, method: str) -> torch.Tensor:
    # Every model starts from scratch: without labels nothing in the run knows the task.
    if labels is None:
        raise ConfigError(f"method {method!r} trains its models from scratch, so it needs labels; "
                          "the training data has none (set transfer.labels: true)")
    return labels


class OnlineMethod(Method):
    """A student trained together with models of its own (peers), all of them trainable.

    The peers are ordinary submodules, not frozen teachers: they follow the method into train
    mode and into the optimizer, and :meth:`peer_models` names them so the trainer validates
    each one and keeps its best weights.
    """

    needs = Needs(teacher=False, labels="required", data=frozenset({"images"}))

    def __init__(self, student: nn.Module, peers: dict[str, nn.Module], *, temperature: float, alpha: float,
                 label_smoothing: float) -> None:
        _check_weights(temperature, alpha)
        super().__init__(student)
        if any(peer is student for peer in peers.values()):
            raise ConfigError("a peer is the student itself; give each peer a model of its own")
        self.peers = nn.ModuleDict(peers)
        self.temperature = temperature
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def peer_models(self) -> dict[str, nn.Module]:
        return dict(self.peers.items())

    def model_loss(self, logits: torch.Tensor, labels: torch.Tensor,
                   targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """alpha · CE + (1 − alpha) · mean over ``targets`` of T² · KL(target ‖ model), or CE alone.

        Targets are detached here, so a model's loss moves only that model's weights.
        """
        hard = hard_label_cross_entropy(logits, labels, self.label_smoothing)
        logs = {"ce": hard.detach()}
        if not targets:
            return hard, {**logs, "loss": hard.detach()}
        soft = torch.stack([soft_target_kl(logits, target.detach(), self.temperature) for target in targets]).mean()
        loss = self.alpha * hard + (1.0 - self.alpha) * soft
        return loss, {**logs, "kd": soft.detach(), "loss": loss.detach()}

    def all_logits(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        student_logits = model_logits(self.student, inputs)
        logits = {"student": student_logits}
        for name, peer in self.peers.items():
            logits[name] = model_logits(peer, inputs)
            _same_classes(student_logits, logits[name], name)
        return logits

    @staticmethod
    def combine(losses: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]],
                student_logits: torch.Tensor) -> StepOutput:
        """The step's result: every model's loss summed; the student's parts logged bare, a peer's as ``name/part``."""
        student_loss, logs = losses["student"]
        logs = {part: value for part, value in logs.items() if part != "loss"}
        for name, (_, parts) in losses.items():
            if name != "student":
                logs.update({f"{name}/{part}": value for part, value in parts.items()})
        total = torch.stack([loss for loss, _ in losses.values()]).sum()
        return StepOutput(loss=total, logits=student_logits, logs=logs)
