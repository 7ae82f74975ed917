"""Finding a method by its registered name, and building it: from a run's options, or from keywords (the Python API).

Every module of this package is imported before a name is looked up, so a method registers itself in its own file
and nothing else names it.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from torch import nn

from distillery.errors import ConfigError
from distillery.methods.base import METHODS, BuildContext, Method, MethodOptions

_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        package = importlib.import_module("distillery.methods")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"distillery.methods.{module.name}")
        _discovered = True


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; ConfigError naming every registered method for an unknown one."""
    _discover()
    return METHODS.get(name)


def method_names() -> list[str]:
    """Every registered method's name, sorted."""
    _discover()
    return METHODS.names()


# What a method distils, by the kind of data (methods/base.py, DATA_KINDS).
DATA_NAMES = {"images": "image and table classifiers", "next_token": "next-token distributions of language models",
              "text_classification": "text classifiers"}


def refusal_for_data(name: str, kind: str) -> str:
    """The message refusing method ``name`` for data of ``kind`` (see :data:`~distillery.methods.base.DATA_KINDS`):
    what it distils, and the methods that distil such data."""
    needs = method_class(name).needs
    takes = "image feature maps" if needs.hooks else " and ".join(DATA_NAMES[taken] for taken in sorted(needs.data))
    fits = [other for other in method_names() if kind in method_class(other).needs.data
            and method_class(other).needs.teacher]
    hint = "; for transformers use distill.hidden_weight" if needs.hooks and kind != "images" else ""
    return f"method {name!r} distils {takes}, not {DATA_NAMES[kind]}: use {', '.join(fits)}{hint}"


def build_method(name: str, student: nn.Module, teacher: nn.Module | None, options: MethodOptions,
                 context: BuildContext) -> Method:
    """The method ``name`` for a configured run, from its validated options (see :meth:`Method.build`)."""
    method_type = method_class(name)
    _check_teacher(name, method_type.needs.teacher, teacher)
    method = method_type.build(student, teacher, options, context)
    method.name = name  # what errors call it: the name the user wrote, not the class
    return method


def create_method(name: str, student: nn.Module, teacher: nn.Module | None = None, **options: Any) -> Method:
    """The method registered as ``name``, built with its constructor's keywords (None means the method's default).

    Example::

        method = create_method("hinton", student, teacher, temperature=4.0, alpha=0.1)
    """
    method_type = method_class(name)
    parameters = inspect.signature(method_type.__init__).parameters
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
    _check_teacher(name, "teacher" in accepted, teacher)
    if teacher is not None:
        given["teacher"] = teacher
    method = method_type(student, **given)
    method.name = name
    return method


def _check_teacher(name: str, takes_one: bool, teacher: nn.Module | None) -> None:
    if takes_one and teacher is None:
        raise ConfigError(f"method {name!r} needs a teacher; set distill.teacher to a teacher's run directory")
    if not takes_one and teacher is not None:
        raise ConfigError(f"method {name!r} trains without a teacher; remove the teacher (distill.teacher)")
