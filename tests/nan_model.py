"""A model factory for the numerical-fault tests: an MLP whose output turns NaN after a number of calls."""
import torch
from torch import nn


class TurnsNaN(nn.Module):
    def __init__(self, features: int, num_classes: int, healthy_calls: int) -> None:
        super().__init__()
        self.layer = nn.Linear(features, num_classes)
        self.healthy_calls = healthy_calls
        self.calls = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.layer(inputs.flatten(1))
        return logits * float("nan") if self.training and self.calls > self.healthy_calls else logits


def make(input_shape, num_classes, healthy_calls: int = 20):
    features = 1
    for size in input_shape:
        features *= size
    return TurnsNaN(features, num_classes, healthy_calls)
