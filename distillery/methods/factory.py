"""Building a method by name from keyword options."""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from distillery.errors import ConfigError
from distillery.methods.base import METHODS, Method


def create_method(name: str, student: nn.Module, teacher: nn.Module | None = None, **options: Any) -> Method:
    """The method registered as ``name``, built with ``options`` (None means the method's default).

    Example::

        method = create_method("hinton", student, teacher, temperature=4.0, alpha=0.1)
    """
    method_class = METHODS.get(name)
    parameters = inspect.signature(method_class.__init__).parameters
    accepted = [key for key in parameters if key not in ("self", "student")]
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        takes = ", ".join(key for key in accepted if key != "teacher") or "no options"
        raise ConfigError(f"method {name!r} does not take {', '.join(unknown)}; it takes: {takes}")
    missing = [key for key in accepted if key != "teacher" and key not in given
               and parameters[key].default is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"method {name!r} needs {' and '.join(missing)} (in distill:); see the method's table in "
                          "the README")
    if "teacher" in accepted:
        if teacher is None:
            raise ConfigError(f"method {name!r} needs a teacher; set distill.teacher to a teacher's run directory")
        given["teacher"] = teacher
    elif teacher is not None:
        raise ConfigError(f"method {name!r} trains without a teacher; remove the teacher (distill.teacher)")
    method = method_class(student, **given)
    method.name = name  # what errors call it: the name the user wrote, not the class
    return method


def method_default(name: str, option: str, fallback: Any = None) -> Any:
    """The default a method's constructor gives ``option`` (``fallback`` when it has none)."""
    parameter = inspect.signature(METHODS.get(name).__init__).parameters.get(option)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def method_accepts(name: str, option: str) -> bool:
    """Whether the method's constructor takes ``option``."""
    return option in inspect.signature(METHODS.get(name).__init__).parameters


def method_uses_teacher_logits(name: str) -> bool:
    """Whether the method can read the teacher's logits from a table instead of running the teacher."""
    return hasattr(METHODS.get(name), "use_precomputed_teacher_logits")


def method_uses_teacher_features(name: str) -> bool:
    """Whether the method reads teacher features, and can read them (with the logits) from tables by sample index."""
    return hasattr(METHODS.get(name), "use_precomputed_teacher_outputs")
