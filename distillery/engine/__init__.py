"""The training loop, optimisers and schedules, checkpoints, devices and processes."""
from distillery.engine.device import autocast, compile_student, resolve_device
from distillery.engine.distributed import DistributedContext, is_main_process, setup_distributed
from distillery.engine.optim import build_optimizer, build_scheduler
from distillery.engine.progress import FitResult, PeerBest, peer_record
from distillery.engine.run_dir import RunDirectory
from distillery.engine.trainer import BestEpoch, Trainer

__all__ = [
    "DistributedContext",
    "FitResult",
    "PeerBest",
    "RunDirectory",
    "BestEpoch",
    "Trainer",
    "autocast",
    "build_optimizer",
    "build_scheduler",
    "compile_student",
    "is_main_process",
    "peer_record",
    "resolve_device",
    "setup_distributed",
]
