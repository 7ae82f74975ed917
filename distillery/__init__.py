"""distillery: train a small student from a large teacher, and prove the result with numbers.

Example::

    import distillery
    result = distillery.distill(teacher, student, train_loader, val_loader, temperature=4.0, alpha=0.1)
    print(distillery.evaluate(result.model, test_loader, teacher=teacher))
"""
from distillery.app.api import distill, distill_online, mutual, train
from distillery.app.config import RunConfig
from distillery.app.config_file import load_config
from distillery.app.demo import demo
from distillery.app.evaluation import evaluate, evaluate_checkpoint
from distillery.app.fit import Result
from distillery.app.run import run
from distillery.app.self_distillation import BornAgainResult, born_again, deep_supervision
from distillery.app.tune import tune
from distillery.app.tune_result import TunePoint, TuneResult
from distillery.compress import compress_report, export_model, quantize_model
from distillery.data import ArrayDataset, Batch, BatchIterator, load_dataset
from distillery.errors import CheckpointError, ConfigError, DataError, DistilleryError, ModelError, RunExistsError
from distillery.eval.report import write_report
from distillery.models import build_model
from distillery.models.checkpoint import load_model

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "Batch",
    "BatchIterator",
    "BornAgainResult",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistilleryError",
    "ModelError",
    "Result",
    "RunConfig",
    "RunExistsError",
    "TunePoint",
    "TuneResult",
    "born_again",
    "build_model",
    "compress_report",
    "deep_supervision",
    "demo",
    "distill",
    "distill_online",
    "evaluate",
    "evaluate_checkpoint",
    "export_model",
    "load_config",
    "load_dataset",
    "load_model",
    "mutual",
    "quantize_model",
    "run",
    "train",
    "tune",
    "write_report",
]
