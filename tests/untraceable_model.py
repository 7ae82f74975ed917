"""A model factory for the export tests: an MLP whose forward branches in Python on a tensor's value.

Eager PyTorch runs (and trains) it; torch.export cannot capture the branch, so neither format can be exported.
"""
import torch
from torch import nn


class BranchesOnValues(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(features, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.layer(inputs.flatten(1))
        if logits.sum() > 0:
            return logits
        return -logits


def make(input_shape, num_classes):
    features = 1
    for size in input_shape:
        features *= size
    return BranchesOnValues(features, num_classes)
