"""The evaluation step: a model's test metrics in memory, or a checkpoint's on its own data and preprocessing."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Collection

from torch import nn

from distillery.app.steps.prepared_data import check_model_fits, checkpoint_data
from distillery.app.steps.fit import as_batches
from distillery.data import BatchIterator, as_batch
from distillery.errors import DataError
from distillery.eval.latency import measure_latency
from distillery.eval.metrics import (
    accuracy,
    agreement,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_results,
    predict,
    reliability_bins,
)
from distillery.models import count_parameters, size_on_disk_bytes
from distillery.models.checkpoint import load_model
from distillery.teachers import load_teacher
from distillery.teachers.inputs import feed_own_inputs


def evaluate(model: nn.Module, data: Any, *, teacher: nn.Module | None = None, latency: bool = False,
             batch_size: int = 512, bins: int = 15) -> dict[str, Any]:
    """Accuracy, NLL, expected calibration error, a reliability table, per-class accuracy and the confusion
    matrix (``per_class``, ``confusion_matrix``: rows the true class), size, and optionally agreement with a
    teacher and CPU latency (with threads, CPU, torch version and whether it was stable).

    Example::

        metrics = distillery.evaluate(student, test_loader, teacher=teacher, latency=True)
    """
    batches = as_batches(data, batch_size, shuffle=False, seed=0)
    logits, labels = predict(model, batches)
    if labels.numel() == 0:
        raise DataError("the evaluation data is empty")
    metrics: dict[str, Any] = {
        "samples": int(labels.numel()),
        "accuracy": accuracy(logits, labels),
        "nll": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(logits, labels, bins=bins),
        "parameters": count_parameters(model),
        "size_bytes": size_on_disk_bytes(model),
    }
    if teacher is not None:
        teacher_logits, _ = predict(teacher, batches)
        metrics["agreement"] = agreement(logits, teacher_logits)
    if latency:
        sample_shape = as_batch(next(iter(batches))).inputs.shape[1:]
        # Measured on a CPU copy so the caller's model stays on its device.
        metrics["latency"] = measure_latency(copy.deepcopy(model).cpu(), tuple(sample_shape))
    metrics["reliability"] = reliability_bins(logits, labels, bins=bins)
    metrics.update(per_class_results(logits, labels))  # per_class (accuracy, samples), confusion_matrix
    return metrics


def evaluate_checkpoint(path: str | Path, *, teacher: str | Path | None = None, dataset: str | None = None,
                        data_path: str | None = None, test_limit: int | None = None,
                        latency: bool = True, allow_factories: Collection[str] = ()) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of its own dataset (or ``dataset``), with its own preprocessing;
    a ``teacher`` is fed its own. ``allow_factories``: user factories the checkpoints may name.

    Example::

        metrics = evaluate_checkpoint("runs/distilled", teacher="runs/teacher")
    """
    model, metadata = load_model(path, allow_factories=allow_factories)
    data = checkpoint_data(path, metadata, dataset=dataset, data_path=data_path, test_limit=test_limit,
                           allow_factories=allow_factories)
    teacher_model = None
    if teacher is not None:
        teacher_model, teacher_metadata = load_teacher(teacher, allow_factories=allow_factories)
        check_model_fits(teacher_metadata, data.test, teacher, "teacher")
        feed_own_inputs(teacher_model, data.normalizer, teacher_metadata.get("preprocessing"),
                        input_shape=data.test.input_shape, source=str(teacher))
    result = evaluate(model, BatchIterator(data.test, 512), teacher=teacher_model, latency=latency)
    return {"name": Path(path).name, "role": metadata.get("role"), "split": "test", **result}
