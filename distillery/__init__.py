"""distillery: train a small student from a large teacher, and prove the result with numbers.

Example::

    import distillery
    result = distillery.distill(teacher, student, train_loader, val_loader, temperature=4.0, alpha=0.1)
    print(distillery.evaluate(result.model, test_loader, teacher=teacher))
"""
from __future__ import annotations

import importlib
from typing import Any

from distillery.errors import CheckpointError, ConfigError, DataError, DistilleryError, ModelError, RunExistsError  # noqa: F401

__version__ = "0.1.0"

# The public API, imported on first use: importing the package (and so `distillery --help`) stays free of
# torch, matplotlib, onnx and transformers until a name that needs them is touched.
_LAZY = {
    "distill": "distillery.app.workflows.api", "distill_online": "distillery.app.workflows.api", "mutual": "distillery.app.workflows.api",
    "train": "distillery.app.workflows.api",
    "RunConfig": "distillery.app.config",
    "load_config": "distillery.app.config.files",
    "demo": "distillery.app.workflows.demo",
    "evaluate": "distillery.app.steps.evaluation", "evaluate_checkpoint": "distillery.app.steps.evaluation",
    "Result": "distillery.app.steps.fit",
    "run": "distillery.app.workflows.run",
    "BornAgainResult": "distillery.app.workflows.self_distillation", "born_again": "distillery.app.workflows.self_distillation",
    "deep_supervision": "distillery.app.workflows.self_distillation",
    "tune": "distillery.app.workflows.tune",
    "TunePoint": "distillery.app.workflows.tune_result", "TuneResult": "distillery.app.workflows.tune_result",
    "compress_report": "distillery.compress", "export_model": "distillery.compress",
    "quantize_model": "distillery.compress",
    "ArrayDataset": "distillery.data", "Batch": "distillery.data", "BatchIterator": "distillery.data",
    "load_dataset": "distillery.data",
    "write_report": "distillery.eval.report",
    "build_model": "distillery.models",
    "load_model": "distillery.models.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distillery' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = sorted(["CheckpointError", "ConfigError", "DataError", "DistilleryError", "ModelError", "RunExistsError",
                  *_LAZY])
