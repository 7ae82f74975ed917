"""The entry of a config-driven run: one student (the pipeline), or born-again generations of one."""
from __future__ import annotations

from pathlib import Path

from distillery.app.born_again import run_born_again
from distillery.app.config import RunConfig
from distillery.app.language_pipeline import run_language_model
from distillery.app.language_tasks import is_text_run
from distillery.app.pipeline import run_pipeline
from distillery.app.resume import refuse_born_again


def run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Train (``config.distill`` absent) or distil a model as configured; returns the run directory.

    The full training state is saved in ``<output_dir>/state/`` after every epoch (and every
    ``train.checkpoint_every_steps`` steps); ``resume=True`` continues an unfinished run from it, with the
    config from :func:`distillery.app.resume.resume_config`, and ends with the weights an uninterrupted run
    would have. A config with ``distill.generations`` trains born-again generations (not resumable).

    Example::

        run_dir = run(load_config("configs/digits_distill.yaml"))
        run_dir = run(resume_config("runs/distilled"), resume=True)   # after an interruption
    """
    if resume:
        refuse_born_again(config, config.output_dir)
    if config.distill is not None and config.distill.generations is not None:
        return run_born_again(config, overwrite=overwrite)
    if is_text_run(config):
        return run_language_model(config, overwrite=overwrite, resume=resume)
    return run_pipeline(config, overwrite=overwrite, resume=resume)
