"""A model factory for the resume tests: an MLP with dropout, so training draws random numbers every step.

Two environment variables, read only here, let a test interrupt a run at a chosen or random step without
changing the run's config: ``DISTILLERY_TEST_STEP_SLEEP=0.02`` sleeps that many seconds per training
forward (so a test can kill the process at a random step), and ``DISTILLERY_TEST_SIGNAL_AT=30:SIGTERM``
sends that signal to the process itself during the 30th training forward. Under torchrun, a comma-separated
list of ``forward:SIGNAL:rank`` (``30:SIGTERM:1,31:SIGTERM:0``) signals each process at its own forward.
"""
import os
import signal
import time

import torch
from torch import nn


class StepModel(nn.Module):
    def __init__(self, features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, num_classes))
        self.training_calls = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.training_calls += 1
            time.sleep(float(os.environ.get("DISTILLERY_TEST_STEP_SLEEP", "0")))
            for order in filter(None, os.environ.get("DISTILLERY_TEST_SIGNAL_AT", "").split(",")):
                at, name, *rank = order.split(":")
                if self.training_calls == int(at) and rank in ([], [os.environ.get("RANK", "0")]):
                    os.kill(os.getpid(), getattr(signal, name))
        return self.layers(inputs)


def make(input_shape, num_classes, hidden: int = 32, dropout: float = 0.2):
    features = 1
    for size in input_shape:
        features *= size
    return StepModel(features, hidden, num_classes, dropout)
