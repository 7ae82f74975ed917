"""Deep mutual learning: a student and its peers trained from scratch together, each learning from the others."""
from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field, field_validator
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.methods.base import METHODS, BuildContext, StepOutput
from distillery.methods.peers import OnlineMethod, PeerOptions, _needs_labels, model_spec


class MutualLearningOptions(PeerOptions):
    peers: list[dict[str, Any]] = Field(..., min_length=1, description="model specs (like model:) of the peers "
                                                                       "trained from scratch beside the student")
    temperature: float = Field(1.0, gt=0.0, description="the temperature of the models' soft targets")

    @field_validator("peers")
    @classmethod
    def _peers_have_names(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [model_spec(spec) for spec in value]

    def peer_specs(self) -> list[dict[str, Any]]:
        return list(self.peers)

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        # Each peer starts from a seed of its own, so no two models begin alike.
        peers = [context.new_model(spec, f"peers[{index}]", 1 + index) for index, spec in enumerate(self.peers)]
        return {**super().keywords(context), "peers": peers, "label_smoothing": context.label_smoothing}


@METHODS.register("mutual")
class MutualLearning(OnlineMethod):
    """Deep mutual learning (Zhang et al., CVPR 2018): a student and its peers, all from scratch.

    Every model minimises ``alpha · CE(labels) + (1 − alpha) · T² · mean_j KL(softmax(z_j/T) ‖ softmax(z/T))``
    over the other models j, whose predictions are taken as fixed targets. All models step at once
    on the summed loss; since the targets are detached, each model's gradient is that of its own loss.
    The peers are named ``peer1``, ``peer2``, ... in the order given.

    Example::

        method = MutualLearning(student, peers=[mlp((64,), 10, hidden=[32])], temperature=1.0, alpha=0.5)
    """

    Options = MutualLearningOptions

    def __init__(self, student: nn.Module, *, peers: Sequence[nn.Module], temperature: float = 1.0,
                 alpha: float = 0.5, label_smoothing: float = 0.0) -> None:
        if isinstance(peers, nn.Module) or not peers:
            raise ConfigError("mutual learning needs a list of at least one peer model to train beside the student")
        super().__init__(student, {f"peer{number}": peer for number, peer in enumerate(peers, start=1)},
                         temperature=temperature, alpha=alpha, label_smoothing=label_smoothing)

    def step(self, batch: Batch) -> StepOutput:
        labels = _needs_labels(batch.labels, "mutual")
        logits = self.all_logits(batch.inputs)
        losses = {}
        for name, own in logits.items():
            others = [other for other_name, other in logits.items() if other_name != name]
            losses[name] = self.model_loss(own, labels, others)
        return self.combine(losses, logits["student"])
