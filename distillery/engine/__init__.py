"""The training loop, optimisers and schedules, checkpoints and devices."""
from distillery.engine.checkpoint import load_checkpoint_files, save_checkpoint
from distillery.engine.device import resolve_device
from distillery.engine.optim import build_optimizer, build_scheduler
from distillery.engine.run_dir import RunDirectory
from distillery.engine.trainer import FitResult, Trainer

__all__ = [
    "FitResult",
    "RunDirectory",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "load_checkpoint_files",
    "resolve_device",
    "save_checkpoint",
]
