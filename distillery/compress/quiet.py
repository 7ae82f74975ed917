"""Silence the exporters' and the quantizer's own output, so a command prints only its own lines."""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from typing import Iterator

# Libraries that log progress, skipped optional operators (torchvision's) and graph dumps while they export.
_CHATTY_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnxruntime")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Inside, prints, warnings and the chatty libraries' log records go nowhere; everything is restored after.

    Example::

        with quiet():
            program = torch.onnx.export(model, (inputs,), dynamo=True)
    """
    loggers = [logging.getLogger(name) for name in _logger_names()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _logger_names() -> list[str]:
    # Loggers below these that set a level of their own would not inherit the parent's, so each is set.
    known = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in _CHATTY_LOGGERS]
    return sorted(set(_CHATTY_LOGGERS) | set(known))


def first_line_of_cause(error: BaseException) -> str:
    """The first line of the innermost cause of ``error``: the exporters wrap the useful message in advice.

    Example: ``first_line_of_cause(exporter_error)`` -> ``"Could not guard on data-dependent expression ..."``
    """
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [" ".join(line.split()) for line in _ANSI_ESCAPE.sub("", str(error)).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
