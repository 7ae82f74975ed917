"""Building a method by name from keyword options."""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from distillery.methods.base import METHODS, Method


def create_method(name: str, student: nn.Module, teacher: nn.Module | None = None, **options: Any) -> Method:
    """The method registered as ``name``, given only the options its constructor declares.

    Options a method does not use (``temperature`` for ``logit_mse``) are dropped, so one
    config section serves every method.

    Example::

        method = create_method("hinton", student, teacher, temperature=4.0, alpha=0.1)
    """
    method_class = METHODS.get(name)
    accepted = inspect.signature(method_class.__init__).parameters
    kwargs = {key: value for key, value in options.items() if key in accepted}
    if "teacher" in accepted:
        kwargs["teacher"] = teacher
    return method_class(student, **kwargs)
