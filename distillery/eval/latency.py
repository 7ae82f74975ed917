"""CPU inference latency (batch of one) and throughput (large batch) of a model, or of any callable.

Every measurement records where it was taken (threads, CPU model, torch version) and whether its own spread
lets it be trusted: see :func:`assess_stability` for the rule.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import platform
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.eval.metrics import eval_mode, model_device

ROUNDS = 5  # consecutive rounds each timed series is split into, to compare with itself
# Each timed series runs at least this long, so that one round outlasts a scheduler time slice (a few ms):
# 200 calls of a 30-µs model take 6 ms, and a single preemption would then move a whole round's median.
MIN_SERIES_SECONDS = 0.2
MAX_ROUND_SPREAD = 0.25  # slowest round's median over the fastest's, minus 1
MAX_TAIL_RATIO = 3.0  # batch-1 p95 over median


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _seconds_per_call(call: Callable[[], object], repeats: int, min_seconds: float = 0.0) -> list[float]:
    """Seconds of each of at least ``repeats`` calls, more while they have taken under ``min_seconds`` in all."""
    timings: list[float] = []
    total = 0.0
    while len(timings) < repeats or total < min_seconds:
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
        total += timings[-1]
    return timings


def _require_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's "model name" (Linux), else what ``platform`` knows, else "unknown".

    Example: ``cpu_model()`` -> ``"Intel(R) Xeon(R) Platinum 8480C"``
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip().lower() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass  # not Linux, or /proc unreadable: platform's answer is coarser but still says something
    return platform.processor() or platform.machine() or "unknown"


def measurement_environment(threads: int) -> dict[str, Any]:
    """Where a latency was measured: ``threads`` (intra-op threads), ``cpu`` (model name), ``torch_version``.

    Example: ``measurement_environment(torch.get_num_threads())["cpu"]``
    """
    return {"threads": threads, "cpu": cpu_model(), "torch_version": torch.__version__}


def _round_medians(seconds: Sequence[float]) -> list[float]:
    rounds = np.array_split(np.asarray(seconds, dtype=float), min(ROUNDS, len(seconds)))
    return [float(np.median(part)) for part in rounds]


def assess_stability(batch1_ms: Sequence[float], batch_seconds: Sequence[float]) -> str | None:
    """Why a measurement cannot be trusted, judged by its own spread; None when it can.

    Each timed series (``batch1_ms``: ms per batch-1 call; ``batch_seconds``: seconds per large batch) is
    split into :data:`ROUNDS` consecutive rounds in the order timed. On a dedicated machine the rounds of
    one deterministic call agree within a few percent; interference (other processes, a shared virtual
    machine's neighbours, frequency changes) only ever slows calls down, and it comes and goes. So a
    measurement is unstable when, in either series, the slowest round's median exceeds the fastest's by
    more than :data:`MAX_ROUND_SPREAD` (25%: beyond it, a "4.0× faster" could as well be 3× or 5×), or
    when the batch-1 p95 exceeds :data:`MAX_TAIL_RATIO` (3) times the median: over 1 call in 20 stalled.
    A series of one call cannot be judged and is not.

    Example: ``assess_stability([1.0] * 40 + [3.0] * 40, [0.01] * 10)`` -> ``"batch-1 round medians ..."``
    """
    for label, values in (("batch-1", list(batch1_ms)), ("large-batch", [s * 1000 for s in batch_seconds])):
        medians = _round_medians(values) if len(values) > 1 else []
        if medians and min(medians) > 0 and max(medians) / min(medians) - 1 > MAX_ROUND_SPREAD:
            return (f"{label} round medians range {min(medians):.3g}-{max(medians):.3g} ms, more than "
                    f"{MAX_ROUND_SPREAD:.0%} apart")
    median, p95 = float(np.median(batch1_ms)), float(np.percentile(batch1_ms, 95))
    if median > 0 and p95 / median > MAX_TAIL_RATIO:
        return f"batch-1 p95 {p95:.3g} ms is {p95 / median:.1f}x its median {median:.3g} ms (over {MAX_TAIL_RATIO:g}x)"
    return None


def time_inference(
    run: Callable[[object], object],
    input_shape: Sequence[int],
    batch1_repeats: int = 200,
    throughput_batch: int = 256,
    throughput_repeats: int = 10,
    warmup: int = 10,
    to_input: Callable[[torch.Tensor], object] = lambda inputs: inputs,
) -> dict[str, Any]:
    """Median and 95th-percentile latency (ms) of ``run`` on one sample, its samples/s on `throughput_batch`,
    and whether the measurement is stable.

    ``run`` is called on random inputs (fixed seed) of shape ``(batch, *input_shape)``, each converted
    once, before timing, by ``to_input`` (a runtime other than torch may want numpy arrays). Each series
    times at least its repeats, and more until it has run :data:`MIN_SERIES_SECONDS`. Throughput is
    `throughput_batch` over the median time of the timed batches; its key keeps its name
    for any `throughput_batch` ("throughput_batch" says which it was). Also returned: the per-round
    medians (``batch1_round_medians_ms``, ``throughput_round_samples_per_s``), ``stable`` and
    ``instability`` (None, or why not: :func:`assess_stability`). Raises ConfigError for counts below 1.
    Example: `time_inference(session_run, (1, 28, 28), to_input=lambda t: t.numpy())["batch1_p95_ms"]`.
    """
    for name, value in [("batch1_repeats", batch1_repeats), ("throughput_batch", throughput_batch),
                        ("throughput_repeats", throughput_repeats)]:
        _require_count(name, value, 1)
    _require_count("warmup", warmup, 0)
    generator = torch.Generator().manual_seed(0)
    single = to_input(torch.randn((1, *input_shape), generator=generator))
    batch = to_input(torch.randn((throughput_batch, *input_shape), generator=generator))
    _seconds_per_call(lambda: run(single), warmup)
    batch1 = np.array(_seconds_per_call(lambda: run(single), batch1_repeats, MIN_SERIES_SECONDS)) * 1000.0
    # One or two untimed large batches are enough to allocate the large buffers.
    _seconds_per_call(lambda: run(batch), min(warmup, 2))
    batch_seconds = _seconds_per_call(lambda: run(batch), throughput_repeats, MIN_SERIES_SECONDS)
    instability = assess_stability(batch1.tolist(), batch_seconds)
    return {
        "batch1_median_ms": float(np.median(batch1)),
        "batch1_p95_ms": float(np.percentile(batch1, 95)),
        "batch256_samples_per_s": throughput_batch / max(float(np.median(batch_seconds)), 1e-9),
        "throughput_batch": throughput_batch,
        "batch1_round_medians_ms": _round_medians(batch1.tolist()),
        "throughput_round_samples_per_s": [throughput_batch / max(s, 1e-9) for s in _round_medians(batch_seconds)],
        "stable": instability is None,
        "instability": instability,
    }


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch1_repeats: int = 200,
    throughput_batch: int = 256,
    throughput_repeats: int = 10,
    warmup: int = 10,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median and 95th-percentile CPU latency (ms) of one sample, and samples/s at `throughput_batch`.

    The model runs in eval mode on random inputs (fixed seed) and its mode is restored after;
    a model on another device is measured on a CPU copy. `threads` sets torch's intra-op
    threads for the measurement only. The timing and the stability verdict are :func:`time_inference`'s;
    ``threads``, ``cpu`` and ``torch_version`` say where it was measured. Raises ConfigError for bad counts.
    Example: `measure_latency(mlp((64,), 10), (64,))["batch1_median_ms"]`.
    """
    if threads is not None:
        _require_count("threads", threads, 1)
    if model_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()  # never move the caller's model off its device
    with eval_mode(model), _num_threads(threads) as used_threads:
        timings = time_inference(model, input_shape, batch1_repeats, throughput_batch, throughput_repeats, warmup)
    return {**timings, **measurement_environment(used_threads)}


def unstable_reason(latency: Any) -> str | None:
    """Why a recorded latency dict (evaluation.json's ``latency``) is not fit to compare; None when it is.

    A record written before stability was judged (no ``stable`` key) counts as fit: nothing says otherwise.
    Example: ``unstable_reason({"stable": False, "instability": "batch-1 round medians ..."})``
    """
    if not isinstance(latency, dict) or latency.get("stable") is not False:
        return None
    return str(latency.get("instability") or "its timings disagree with each other")


def environment_difference(first: Any, second: Any) -> str | None:
    """Why two recorded latency dicts were measured under different conditions (threads, CPU, torch
    version, runtime); None when every one of these that both record is the same.

    Example: ``environment_difference({"threads": 4}, {"threads": 1})`` -> ``"threads 4 vs 1"``
    """
    if not (isinstance(first, dict) and isinstance(second, dict)):
        return None
    differences = [f"{key.replace('_', ' ')} {first[key]} vs {second[key]}"
                   for key in ("threads", "cpu", "torch_version", "runtime")
                   if key in first and key in second and first[key] != second[key]]
    return ", ".join(differences) or None
