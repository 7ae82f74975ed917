"""Running the user's own code: importing a ``package.module:function`` their config or command line names (never
a file), and calling it, so that whatever it raises becomes one line naming their function and its exception.

``--debug`` on the command line prints the user's traceback as well (it is the error's ``__cause__``).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any, Callable, Iterator

from distillery.errors import DistilleryError, ModelError


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (at most 200 characters), else the exception's type name:
    what a one-line error quotes of an exception raised by code that is not ours."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


@contextlib.contextmanager
def user_code(description: str, error: type[DistilleryError] = ModelError) -> Iterator[None]:
    """Inside, an exception of the user's code becomes ``error`` with one line: ``{description} raised
    {type}: {first line} (run with --debug for the traceback)``. A DistilleryError passes through unchanged.

    Example::

        with user_code(f"dataset {source!r} __getitem__({index})", DataError):
            sample = dataset[index]
    """
    try:
        yield
    except DistilleryError:
        raise
    except Exception as raised:  # the user's own code: name it and what it raised, not our stack
        detail = f": {first_line(raised)}" if str(raised).strip() else ""
        raise error(f"{description} raised {type(raised).__name__}{detail} "
                    "(run with --debug for the traceback)") from raised


def import_function(name: str, what: str = "model", error: type[DistilleryError] = ModelError) -> Callable[..., Any]:
    """The callable ``name`` (``package.module:function``) names; ``what`` says in errors what it builds.

    Raises ``error`` naming the module or attribute that is missing, what importing the module raised (an
    exception at its top level), or a value that is not callable.
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise error(f"{what} name {name!r} must look like 'package.module:function'")
    # As with `python -m`: a factory in the folder the command runs from is importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as raised:
        missing = getattr(raised, "name", None)
        if missing is None or module_name == missing or module_name.startswith(f"{missing}."):
            raise error(f"cannot import {module_name!r} for {what} {name!r} ({raised}); "
                        "check the spelling and that its folder is on PYTHONPATH") from None
        with user_code(f"importing {module_name!r} for {what} {name!r}", error):
            raise  # the module was found, and its own imports failed: that is the user's code
    except Exception:
        with user_code(f"importing {module_name!r} for {what} {name!r}", error):
            raise
    function = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise error(f"module {module_name!r} has no {attribute!r} ({what} {name!r})")
        function = getattr(function, part)
    if not callable(function):
        raise error(f"{what} {name!r} is not callable: {type(function).__name__}")
    return function
