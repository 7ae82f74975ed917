"""Teacher outputs computed once, when every epoch shows the teacher the same inputs."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from distillery.data.batch import as_batch, model_logits
from distillery.errors import ModelError
from distillery.eval.metrics import eval_mode
from distillery.models.hooks import capture_features


def precompute_logits(teacher: nn.Module, batches: Iterable, size: int) -> torch.Tensor:
    """The teacher's logits for every sample, placed by sample index: a [size, classes] CPU tensor.

    ``batches`` yields batches with sample indices, as a BatchIterator does. Valid only while the
    transfer pipeline is deterministic (no random augmentation): then the teacher would give the
    same outputs every epoch, and running it once instead of every epoch is most of a
    distillation run's cost saved.

    Example::

        logits = precompute_logits(teacher, BatchIterator(train, 512, transform=normalizer), len(train))
    """
    return precompute_outputs(teacher, batches, size, {})[0]


@torch.no_grad()
def precompute_outputs(teacher: nn.Module, batches: Iterable, size: int,
                       layers: dict[str, nn.Module]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's logits (float32) and the outputs of ``layers`` (float16), by sample index, in one pass.

    Features are kept in float16 from the start: they are what a feature cache stores, and a float32
    copy of a large layer would double the memory the pass needs. A value beyond float16's range
    becomes infinite, which the caller checks.

    Example::

        logits, features = precompute_outputs(teacher, batches, len(train), {"features.1": teacher.features[1]})
    """
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    logit_table: torch.Tensor | None = None
    covered = torch.zeros(size, dtype=torch.bool)
    feature_tables: dict[str, torch.Tensor] = {}
    with eval_mode(teacher):
        for batch in map(as_batch, batches):
            indices = batch.indices
            with capture_features(layers) as features:
                logits = model_logits(teacher, batch.to(device).inputs).float().cpu()
            check_teacher_outputs(logits, indices)
            if logit_table is None:
                logit_table = torch.empty((size, *logits.shape[1:]))
            logit_table[indices] = logits
            covered[indices] = True
            for name, value in features.items():
                if name not in feature_tables:
                    feature_tables[name] = torch.empty((size, *value.shape[1:]), dtype=torch.float16)
                feature_tables[name][indices] = value.to("cpu", torch.float16)
    # Logits and features are written batch by batch together, so full logits mean full features.
    if logit_table is None or not bool(covered.all()):
        raise ValueError("the batches did not cover every sample index once")  # a bug, not a user error
    return logit_table, feature_tables


def check_teacher_outputs(logits: torch.Tensor, indices: torch.Tensor | None = None) -> None:
    """Raise ModelError when a teacher's logits hold NaN or infinite values: the teacher is broken (its
    weights, or inputs it was not trained on), and no loss setting can mend targets like these."""
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    bad_rows = (~finite).reshape(len(logits), -1).any(dim=1)
    where = f" (sample index {int(indices[bad_rows][0])} first)" if indices is not None else ""
    kind = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
    raise ModelError(f"the teacher's outputs are {kind} for {int(bad_rows.sum())} of {len(logits)} samples of a "
                     f"batch{where}: its weights or inputs are broken; check it with `distillery evaluate TEACHER`")
