"""The entry of a config-driven run: one student (the run skeleton, whatever the data), or born-again generations."""
from __future__ import annotations

from pathlib import Path

from distillery.app.config import RunConfig
from distillery.app.skeleton import run_one
from distillery.app.steps.resume import refuse_born_again
from distillery.app.workflows.born_again import run_born_again


def run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Train (``config.distill`` absent) or distil a model as configured; returns the run directory.

    The full training state is saved in ``<output_dir>/state/`` after every epoch (and every
    ``train.checkpoint_every_steps`` steps); ``resume=True`` continues an unfinished run from it, with the
    config from :func:`distillery.app.steps.resume.resume_config`, and ends with the weights an uninterrupted run
    would have. A config with ``distill.generations`` trains born-again generations (not resumable).

    Example::

        run_dir = run(load_config("configs/digits_distill.yaml"))
        run_dir = run(resume_config("runs/distilled"), resume=True)   # after an interruption
    """
    if resume:
        refuse_born_again(config, config.output_dir)
    if config.distill is not None and config.distill.generations is not None:
        return run_born_again(config, overwrite=overwrite)
    return run_one(config, overwrite=overwrite, resume=resume)
