"""Importing a user's ``package.module:function`` named in their own config or command line (never in a file)."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from distillery.errors import ModelError


def import_function(name: str, what: str = "model") -> Callable[..., Any]:
    """The callable ``name`` (``package.module:function``) names; ``what`` says in errors what it builds.

    Raises ModelError naming the module or attribute that is missing, or a value that is not callable.
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"{what} name {name!r} must look like 'package.module:function'")
    # As with `python -m`: a factory in the folder the command runs from is importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(
            f"cannot import {module_name!r} for {what} {name!r} ({error}); "
            "check the spelling and that its folder is on PYTHONPATH"
        ) from None
    function = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise ModelError(f"module {module_name!r} has no {attribute!r} ({what} {name!r})")
        function = getattr(function, part)
    if not callable(function):
        raise ModelError(f"{what} {name!r} is not callable: {type(function).__name__}")
    return function
