"""The fit step's training state: what a config-driven run saves to continue from, and resuming it (``--resume RUN_DIR``)."""
from __future__ import annotations

import shutil
from pathlib import Path

from distillery.app.config import RunConfig
from distillery.app.config.files import dump_config, load_config
from distillery.engine import RunDirectory, resolve_device
from distillery.engine.checkpointer import Checkpointer
from distillery.engine.device import check_compilable
from distillery.engine.distributed import DistributedContext
from distillery.engine.training_state import STATE_DIR, SavedState, read_training_state
from distillery.errors import CheckpointError, ConfigError


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config an unfinished run started with (its ``config.yaml``), writing to ``run_dir`` wherever it is now.

    Example::

        run(resume_config("runs/distilled"), resume=True)
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        read_training_state(run_dir)  # says why: not a run directory, finished, or nothing saved
        raise CheckpointError(f"{run_dir} has no config.yaml, so it cannot be resumed; start it again from its config")
    config = load_config(run_dir / "config.yaml", overrides)
    refuse_born_again(config, str(run_dir))
    read_training_state(run_dir)
    config.output_dir = str(run_dir)
    return config


def refuse_born_again(config: RunConfig, run_name: str) -> None:
    """Born-again generations keep no training state: there is nothing to resume them from."""
    if config.distill is not None and config.distill.generations is not None:
        raise ConfigError(f"{run_name} is a born-again run (distill.generations); its generations keep no training "
                          "state, so it cannot be resumed: start it again with --overwrite")


def start_or_resume(run_dir: RunDirectory, config: RunConfig, method, saved: SavedState | None, peers: list[str],
                    context: DistributedContext) -> None:
    """Refuse what fit_method would refuse and a saved state that does not fit, then let rank 0 start the run
    directory, or continue it. Only now: a config, teacher or cache error must not touch the directory."""
    resolve_device(config.device)
    if config.train.compile:
        check_compilable(method)
    if saved is not None:
        saved.check_fits(method, context.world_size, context.fsdp)  # on every process: each loads its own part
    if saved is None:
        context.main_only(lambda: run_dir.start(dump_config(config)))
    else:
        context.main_only(lambda: run_dir.resume(saved.history, peers))


def checkpointer_for(config: RunConfig, run_dir: RunDirectory, saved: SavedState | None,
                     context: DistributedContext) -> Checkpointer:
    """The run's Checkpointer (one in every process), numbering its saves on from a resumed state's, with the
    command that resumes the run: under torchrun, a torchrun line that starts as many processes."""
    command = "distill" if config.distill is not None else "train"
    return Checkpointer(run_dir.path / STATE_DIR, every_steps=config.train.checkpoint_every_steps,
                        resume_hint=f"{context.launcher()} {command} --resume {run_dir.path}",
                        saves=saved.document["saves"] if saved is not None else 0)


def discard_state(run_dir: RunDirectory) -> None:
    """Remove a finished run's training state: its model.json marks it finished, there is nothing to resume."""
    shutil.rmtree(run_dir.path / STATE_DIR, ignore_errors=True)
