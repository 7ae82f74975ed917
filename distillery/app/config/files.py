"""The config step, its files: reading and writing run configs: YAML read as data (``yaml.safe_load``), ``key=value`` overrides, and
validation errors told in one line that names the key and the fix."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from distillery.app.config.run_config import RunConfig
from distillery.errors import ConfigError


def _known_keys(model_class: type[BaseModel], location: tuple) -> list[str]:
    # Walk the schema down to the section the bad key sits in, to suggest a correction.
    for part in location[:-1]:
        field = model_class.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if nested is None:
            return []
        model_class = nested
    known = getattr(model_class, "known_keys", None)  # distill: also holds any method's options
    return known() if known is not None else list(model_class.model_fields)


def _is_union_branch(part: Any) -> bool:
    # pydantic names the member of a Union it tried ("str", "TeacherSpec", "list[...]") inside an error's location.
    return isinstance(part, str) and (part in ("str", "int", "float") or part[:1].isupper() or "[" in part)


def _describe(error: ValidationError, source: str) -> str:
    # An unknown key usually explains the missing one too (a typo), so report it first.
    # Then our own checks, which name the fix; a union's other branches ("input should be a string") last.
    errors = sorted(error.errors(), key=lambda e: (e["type"] != "extra_forbidden", e["type"] != "value_error"))
    first = errors[0]
    location = tuple(part for part in first["loc"] if not _is_union_branch(part))
    key = ".".join(str(part) for part in location)
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(location[-1]), _known_keys(RunConfig, location), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; remove it"
        return f"{source}: unknown key {key!r}{hint}"
    if first["type"] == "missing":
        return f"{source}: {key} is required; add it to the config"
    if first["type"] == "value_error":
        # Our own checks already name the problem and the fix.
        where = f"{key}: " if key else ""  # a check on the whole config has no single key to name
        return f"{source}: {where}{first['msg'].removeprefix('Value error, ')}"
    return f"{source}: {key} = {first.get('input')!r} is invalid: {first['msg'].lower()}; fix it in the config or with --set {key}=..."


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "distill.alpha=0.1"]`` -> a nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"override {pair!r} is not key=value, e.g. --set train.epochs=5")
        *parents, leaf = key.split(".")
        if not all(parents) or not leaf:
            raise ConfigError(f"override {pair!r} has an empty key part; write e.g. --set train.epochs=5")
        target = nested
        for depth, part in enumerate(parents):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {pair!r} conflicts with another override: {section} is a value, not a section")
        try:
            target[leaf] = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError, ValueError):
            raise ConfigError(f"override {pair!r} has a value that is not valid YAML; quote strings, close brackets") from None
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(document: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> RunConfig:
    """Validate a config mapping (plus ``key=value`` overrides) into a RunConfig."""
    merged = merge(document, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run configuration with ``yaml.safe_load`` and validate it.

    Example::

        config = load_config("configs/fashion_mnist_distill.yaml", ["train.epochs=3"])
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; give the YAML file inside it, e.g. {path / 'run.yaml'}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start} cannot be read); save it as UTF-8 "
                          "YAML") from None
    except OSError as error:
        raise ConfigError(f"cannot read config {path} ({error.strerror})") from None
    document = _parse_yaml(text, path)
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (output_dir:, model:, ...), not {type(document).__name__}")
    return build_config(document, overrides, source=str(path))


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        said = ", ".join(part for part in (getattr(error, "context", None), getattr(error, "problem", None)) if part)
        detail = f" ({said})" if said else ""
        raise ConfigError(f"{path} is not valid YAML{where}{detail}; check indentation and colons") from None
    except (RecursionError, ValueError, TypeError) as error:
        # The reader's own failures on hostile input (nesting beyond the stack, absurd numbers).
        raise ConfigError(f"{path} cannot be read as YAML ({type(error).__name__}); simplify it") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
