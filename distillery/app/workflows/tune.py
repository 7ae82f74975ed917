"""distillery tune: one short run per grid point, chosen by validation accuracy, beside a from-scratch reference.

Every point is a run directory of its own under the tune's output directory, so an interrupted tune
continues where it stopped: a finished point is read back, not trained again. All points distil from
the same teacher on the same data, so the teacher-output cache (``distill.teacher_cache: auto``) has one
fingerprint for all of them and the teacher runs once.
"""
from __future__ import annotations

import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from tqdm import tqdm

from distillery.app.config import RunConfig
from distillery.app.config.files import build_config, load_config, merge
from distillery.app.workflows.run import run
from distillery.app.workflows.tune_files import write_tune_files
from distillery.app.workflows.tune_result import TunePoint, TuneResult, short_name
from distillery.defaults import TUNE_MAX_POINTS
from distillery.engine import RunDirectory
from distillery.errors import ConfigError, RunExistsError

# Hinton et al. tune exactly these two; small students like low temperatures, so the grid starts at 1.
DEFAULT_GRID: dict[str, list[Any]] = {"distill.temperature": [1, 2, 4], "distill.alpha": [0.1, 0.5, 0.9]}
MAX_POINTS = TUNE_MAX_POINTS
SCRATCH = "scratch"


def parse_grid(pairs: Sequence[str]) -> dict[str, list[Any]]:
    """``["distill.alpha=0.1,0.5"]`` -> ``{"distill.alpha": [0.1, 0.5]}``; values are YAML, as with --set.

    Brackets group a list value: ``model.hidden=[16],[32]`` is two values.
    """
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"--grid {pair!r} is not KEY=V1,V2,..., e.g. --grid distill.alpha=0.1,0.5,0.9")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice; list all its values once, e.g. {key}=1,2,4")
        try:
            values = yaml.safe_load(f"[{raw}]")
        except yaml.YAMLError:
            raise ConfigError(f"--grid {pair!r} has values that are not valid YAML; quote strings, "
                              "close brackets") from None
        grid[key] = values
    return grid


def check_grid(grid: Mapping[str, Sequence[Any]], max_points: int) -> dict[str, list[Any]]:
    """The grid as lists, refused when a key is malformed, a value list is empty or there are too many points."""
    keys = list(grid)
    if not keys:
        raise ConfigError("the grid is empty; give at least one KEY=V1,V2,..., e.g. distill.alpha=0.1,0.5,0.9")
    for key in keys:
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"grid key {key!r} is not a dotted config key such as distill.temperature")
        if isinstance(grid[key], (str, bytes)) or not isinstance(grid[key], Sequence) or len(grid[key]) == 0:
            raise ConfigError(f"grid key {key} has no values; give at least one, e.g. {key}=1,2")
        clash = next((other for other in keys if other.startswith(key + ".")), None)
        if clash:
            raise ConfigError(f"grid keys {key} and {clash} overlap: {key} is a value, not a section; keep one")
    count = 1
    for key in keys:
        count *= len(grid[key])
    if count > max_points:
        raise ConfigError(f"the grid has {count} points, more than the limit of {max_points}; "
                          f"shrink it or raise the limit (--max-points {count})")
    return {key: list(grid[key]) for key in keys}


def tune(config: RunConfig | str | Path, grid: Mapping[str, Sequence[Any]] | None = None, *,
         epochs: int | None = None, output_dir: str | Path | None = None, final: bool = False,
         overwrite: bool = False, max_points: int = MAX_POINTS) -> TuneResult:
    """Distil once per grid point (plus a from-scratch reference), pick the best by validation accuracy.

    ``grid`` maps dotted config keys to value lists (default :data:`DEFAULT_GRID` for methods with a
    temperature and alpha); ``epochs`` shortens every grid run; ``output_dir`` defaults to the config's
    output_dir + ``-tune``. Writes tune.json, tune.md, best.yaml and, for two keys, the tune.png heat map;
    ``final`` then trains the best config at its own epochs into ``output_dir/final``.

    Example::

        result = distillery.tune("configs/digits_distill.yaml", {"distill.alpha": [0.1, 0.9]}, epochs=10)
        print(result.summary)  # best: alpha 0.9: 96.3% val vs 95.9% from scratch
    """
    config = load_config(config) if isinstance(config, (str, Path)) else config
    _check_tunable(config, epochs)
    grid = check_grid(_default_grid(config) if grid is None else grid, max_points)
    output_dir = Path(output_dir if output_dir is not None else f"{config.output_dir}-tune")
    epochs = epochs or config.train.epochs
    planned = plan_points(config, grid, epochs, output_dir)
    plan = _plan_record(config, grid, epochs)
    _claim(output_dir, plan, overwrite)
    started, finished = time.perf_counter(), []
    for number, (name, settings, run_config) in enumerate(planned, start=1):
        finished.append(_run_point(name, settings, run_config, overwrite))
        _report_progress(finished, number, len(planned))
        write_tune_files(output_dir, plan, finished, grid, time.perf_counter() - started)
    scratch, points = finished[0], finished[1:]
    best = max(points, key=lambda point: point.val_accuracy)  # the first of equals, in grid order
    result = TuneResult(best, full_config(config, best.settings), scratch, points, output_dir)
    write_tune_files(output_dir, plan, finished, grid, time.perf_counter() - started, result)
    if final:
        final_config = result.best_config.model_copy(update={"output_dir": str(output_dir / "final")})
        result.final_run = _run_point("final", best.settings, final_config, overwrite).run_dir
    return result


def _check_tunable(config: RunConfig, epochs: int | None) -> None:
    if config.distill is None:
        raise ConfigError("tune compares distillation settings, but the config has no distill: section; add one "
                          "(teacher, method, temperature, alpha)")
    if config.data.val_fraction == 0:
        raise ConfigError("tune chooses by validation accuracy, but data.val_fraction is 0 (no validation split); "
                          "set it, e.g. --set data.val_fraction=0.1 (the test split is never used to choose)")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs is {epochs}; give at least 1")


def _default_grid(config: RunConfig) -> dict[str, list[Any]]:
    method, takes = config.distill.method, type(config.distill.options).model_fields
    if not ("temperature" in takes and "alpha" in takes):
        raise ConfigError(f"method {method!r} has no temperature and alpha to tune by default; "
                          "name what to try, e.g. --grid distill.ce_weight=0.5,1,2")
    return DEFAULT_GRID


def full_config(config: RunConfig, settings: Mapping[str, Any], source: str = "the best grid point") -> RunConfig:
    """``config`` with ``settings`` (dotted key -> value) applied, validated as --set validates.

    Example: ``full_config(config, {"distill.alpha": 0.9}).distill.alpha == 0.9``
    """
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return build_config(merge(config.model_dump(mode="json"), nested), source=source)


def plan_points(config: RunConfig, grid: Mapping[str, list[Any]], epochs: int,
                output_dir: Path) -> list[tuple[str, dict[str, Any], RunConfig]]:
    """(directory name, settings, run config) of the scratch reference, then of every grid point in order.

    Every config is validated here, before anything trains; an error names the grid point.
    """
    scratch = config.model_copy(update={"distill": None, "transfer": None, "role": "scratch"})
    planned = [(SCRATCH, {}, scratch)]
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        label = ", ".join(f"{key}={value}" for key, value in settings.items())
        point = full_config(config, settings, f"grid point {label}")
        if point.data.val_fraction == 0:
            raise ConfigError(f"grid point {label}: data.val_fraction 0 leaves no validation split to choose by; "
                              "remove that value from the grid")
        planned.append((point_name(settings), settings, point))
    names = [name for name, _, _ in planned]
    if len(set(names)) < len(names):
        raise ConfigError("two grid points get the same directory name: a key lists the same value twice "
                          "(or two values that differ only in brackets, quotes or spaces); remove one")
    # A grid over train.epochs is a grid over the budget: --epochs does not override it.
    return [(name, settings, _shortened(point, point.train.epochs if "train.epochs" in settings else epochs,
                                        output_dir / name)) for name, settings, point in planned]


def point_name(settings: Mapping[str, Any]) -> str:
    """The run directory's name: ``{"distill.temperature": 2, "distill.alpha": 0.5}`` -> ``temperature-2_alpha-0.5``."""
    parts = []
    for key, value in settings.items():
        text = value if isinstance(value, str) else json.dumps(value)
        text = re.sub(r"[^A-Za-z0-9.+-]+", "-", re.sub(r"[\[\]{}'\" ]", "", text))  # [8, 8] -> 8-8
        parts.append(f"{short_name(key, settings).replace('.', '-')}-{text}")
    return "_".join(parts)


def _shortened(config: RunConfig, epochs: int, output_dir: Path) -> RunConfig:
    # Latency says nothing about which settings win, and costs seconds per point.
    return config.model_copy(update={"output_dir": str(output_dir), "measure_latency": False,
                                     "train": config.train.model_copy(update={"epochs": epochs})})


def _plan_record(config: RunConfig, grid: Mapping[str, list[Any]], epochs: int) -> dict[str, Any]:
    """What makes two tunes the same tune: the config (progress bars aside), the grid and the epochs."""
    document = config.model_dump(mode="json")
    document.pop("progress")
    return json.loads(json.dumps({"config": document, "grid": grid, "epochs": epochs}))


def _claim(output_dir: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Refuse a directory that holds another tune unless ``overwrite``, and one that holds files that are not a
    tune's in any case: a tune replaces only its own files."""
    record = output_dir / "tune.json"
    if output_dir.exists() and not output_dir.is_dir():
        raise RunExistsError(f"tune output directory {output_dir} is a file; choose a directory name")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    if not record.is_file():
        raise RunExistsError(f"{output_dir} is not empty and holds no tune; choose another --output-dir")
    try:
        recorded = json.loads(record.read_text()).get("plan")
    except (ValueError, AttributeError):
        raise RunExistsError(f"{record} is not a tune's record; choose another --output-dir") from None
    if recorded != plan and not overwrite:
        raise RunExistsError(f"{output_dir} holds another tune (a different config, grid or --epochs); "
                             "pass --overwrite to replace it or choose another --output-dir")


def _run_point(name: str, settings: dict[str, Any], config: RunConfig, overwrite: bool) -> TunePoint:
    run_dir = RunDirectory(config.output_dir)
    reused = run_dir.finished and not overwrite
    if not reused:
        run(config, overwrite=overwrite)
    model = json.loads((run_dir.path / "model.json").read_text())
    evaluation = json.loads((run_dir.path / "evaluation.json").read_text())
    records = [json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines() if line]
    return TunePoint(name, settings, run_dir.path, float(model["metrics"]["val/accuracy"]),
                     float(evaluation["accuracy"]), sum(record.get("epoch_time_s", 0.0) for record in records),
                     reused, int(model["metrics"].get("val/samples", 0)))


def _report_progress(finished: list[TunePoint], number: int, total: int) -> None:
    point = finished[-1]
    how = "reused" if point.reused else f"{point.train_seconds:.1f} s"
    line = f"tune [{number}/{total}] {point.label}: val {point.val_accuracy:.2%} ({how})"
    if len(finished) > 1:
        best = max(finished[1:], key=lambda candidate: candidate.val_accuracy)
        line += f"; best so far {best.label} {best.val_accuracy:.2%} vs {finished[0].val_accuracy:.2%} from scratch"
    tqdm.write(line, file=sys.stderr)  # a result per point: printed with --quiet too, like the run's result line
