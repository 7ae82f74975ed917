"""What distillery tells its user while it works: notes, checks and results, through the ``distillery`` logger.

They go to standard error whatever it is (a terminal, a log file, a CI job): only progress bars depend on a
terminal. Level INFO is the default; the command line's ``--quiet`` raises it to WARNING and ``--debug``
lowers it to DEBUG. Under torchrun only rank 0 speaks (the other processes would repeat it). A program that
configures logging itself can call :func:`set_verbosity` or set the ``distillery`` logger's level.

Example::

    from distillery.messages import note
    note("teacher runs/teacher: 93.6% test accuracy on this data")
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("distillery")


class _StandardError(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (a test runner or a redirect may replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _only_rank_zero(record: logging.LogRecord) -> bool:
    # torchrun sets RANK in every process before distillery runs; a plain process has none.
    return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"


if not any(isinstance(handler, _StandardError) for handler in logger.handlers):
    _handler = _StandardError()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _handler.addFilter(_only_rank_zero)
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, not again by a root handler the user's program installs


def note(message: str) -> None:
    """A line the user should see by default: a check, a note about the run, a result."""
    logger.info(message)


def set_verbosity(*, quiet: bool = False, debug: bool = False) -> None:
    """WARNING and above with ``quiet``; DEBUG with ``debug``; INFO otherwise."""
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
