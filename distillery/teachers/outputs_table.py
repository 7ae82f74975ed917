"""A teacher known only by its outputs on the transfer set: computed elsewhere, looked up by sample index."""
from __future__ import annotations

import torch
from torch import nn

from distillery.errors import ConfigError


class OutputsTable(nn.Module):
    """The teacher's logits ``[N, C]`` for the N transfer samples, in the transfer set's order.

    It has no function to run on other inputs (augmented views, the test split, features): whatever would call
    it is refused in one line. Example: ``teacher = OutputsTable(torch.randn(100, 10), "teacher_logits.npy")``.
    """

    def __init__(self, logits: torch.Tensor, source: str) -> None:
        super().__init__()
        self.logits = logits
        self.source = source

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"the teacher {self.source} is given as its outputs on the transfer set, so it cannot run "
                          "on other inputs; turn data.augment off and use a logit method (hinton, logit_mse, dkd, "
                          "dist)")
