"""CPU inference latency (batch of one) and throughput (large batch) of a model, or of any callable."""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.eval.metrics import eval_mode, model_device


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _seconds_per_call(call: Callable[[], object], repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return timings


def _require_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def time_inference(
    run: Callable[[object], object],
    input_shape: Sequence[int],
    batch1_repeats: int = 200,
    throughput_batch: int = 256,
    throughput_repeats: int = 10,
    warmup: int = 10,
    to_input: Callable[[torch.Tensor], object] = lambda inputs: inputs,
) -> dict[str, float | int]:
    """Median and 95th-percentile latency of ``run`` on one sample, and its samples/s on `throughput_batch`.

    ``run`` is called on random inputs (fixed seed) of shape ``(batch, *input_shape)``, each converted
    once, before timing, by ``to_input`` (a runtime other than torch may want numpy arrays). The
    throughput key keeps its name for any `throughput_batch`; "throughput_batch" says which it was.
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
    batch1 = np.array(_seconds_per_call(lambda: run(single), batch1_repeats)) * 1000.0
    # One or two untimed large batches are enough to allocate the large buffers.
    _seconds_per_call(lambda: run(batch), min(warmup, 2))
    total = sum(_seconds_per_call(lambda: run(batch), throughput_repeats))
    return {
        "batch1_median_ms": float(np.median(batch1)),
        "batch1_p95_ms": float(np.percentile(batch1, 95)),
        "batch256_samples_per_s": throughput_batch * throughput_repeats / max(total, 1e-9),
        "throughput_batch": throughput_batch,
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
) -> dict[str, float | int]:
    """Median and 95th-percentile CPU latency of one sample, and samples/s at `throughput_batch`.

    The model runs in eval mode on random inputs (fixed seed) and its mode is restored after;
    a model on another device is measured on a CPU copy. `threads` sets torch's intra-op
    threads for the measurement only. The timing itself is :func:`time_inference`'s.
    Example: `measure_latency(mlp((64,), 10), (64,))["batch1_median_ms"]`.
    """
    if threads is not None:
        _require_count("threads", threads, 1)
    if model_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()  # never move the caller's model off its device
    with eval_mode(model), _num_threads(threads) as used_threads:
        timings = time_inference(model, input_shape, batch1_repeats, throughput_batch, throughput_repeats, warmup)
    return {**timings, "threads": used_threads}
