"""What a live teacher's forward pass costs, and which ways of running it are faster on this machine.

The teacher of benchmarks/few_labels.py (CNN 32-64-128 with batch norm) over the 10,000 Fashion-MNIST test images,
as function matching runs it on every training batch: eval mode, no autograd. Each variant is timed interleaved
with the others (a, b, c, ..., a, b, c, ...) so machine noise hits all alike; medians of --repeats, and the largest
difference of its logits from the float32 baseline's. Every variant first runs one untimed warm-up pass (for
torch.compile, the compilation, whose time is reported).

    OMP_NUM_THREADS=2 python benchmarks/live_teacher.py [--repeats 5] [--teacher bench-out/few-labels/teacher]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_labels import TEACHER, finished  # noqa: E402
from kd_vs_scratch import provenance  # noqa: E402

from distillery.app.config import DataConfig  # noqa: E402
from distillery.app.steps.prepared_data import prepare_data  # noqa: E402
from distillery.teachers import load_teacher  # noqa: E402


def passes(images: torch.Tensor, batch_size: int, forward: Callable[[torch.Tensor], torch.Tensor],
           layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``forward`` over ``images`` a batch at a time; the logits, in float32."""
    return torch.cat([forward(images[start:start + batch_size].contiguous(memory_format=layout)).float()
                      for start in range(0, len(images), batch_size)])


def variants(teacher: torch.nn.Module, batch_size: int) -> dict[str, tuple[Callable, int, torch.memory_format]]:
    """Each way of running the teacher: (forward, batch size, memory layout of its inputs)."""
    def no_grad(model):
        def forward(inputs):
            with torch.no_grad():
                return model(inputs)
        return forward

    def inference(inputs):
        with torch.inference_mode():
            return teacher(inputs)

    def bfloat16(inputs):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return teacher(inputs)

    last = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    contiguous = torch.contiguous_format
    return {
        f"no_grad, batch {batch_size}, float32 (the baseline)": (no_grad(teacher), batch_size, contiguous),
        f"inference_mode, batch {batch_size}": (inference, batch_size, contiguous),
        f"no_grad, batch {batch_size * 8}": (no_grad(teacher), batch_size * 8, contiguous),
        f"channels_last weights and inputs, batch {batch_size}": (no_grad(last), batch_size, torch.channels_last),
        f"channels_last weights, inputs as they come, batch {batch_size}": (no_grad(last), batch_size, contiguous),
        f"bfloat16 autocast, batch {batch_size}": (bfloat16, batch_size, contiguous),
        f"torch.compile, batch {batch_size}": (no_grad(torch.compile(copy.deepcopy(teacher))), batch_size,
                                               contiguous),
        f"torch.compile of the channels_last teacher, batch {batch_size}": (
            no_grad(torch.compile(copy.deepcopy(last))), batch_size, contiguous),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("bench-out/few-labels/teacher"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    finished(TEACHER, args.teacher)
    teacher, metadata = load_teacher(args.teacher)
    images = prepare_data(DataConfig(dataset="fashion-mnist"), metadata["preprocessing"]).test.inputs
    ways = variants(teacher, args.batch_size)
    compile_seconds, warm = {}, {}
    for name, (forward, batch_size, layout) in ways.items():
        started = time.perf_counter()
        warm[name] = passes(images, batch_size, forward, layout)  # compiles for both batch shapes
        compile_seconds[name] = time.perf_counter() - started
    baseline = warm[next(iter(ways))]
    times: dict[str, list[float]] = {name: [] for name in ways}
    error: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (forward, batch_size, layout) in ways.items():
            started = time.perf_counter()
            logits = passes(images, batch_size, forward, layout)
            times[name].append(time.perf_counter() - started)
            error[name] = float((logits - baseline).abs().max())
    source = provenance()
    reference = statistics.median(times[next(iter(ways))])
    print(f"Machine: {source['machine']}. Commit `{source['commit']}`. torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(images):,} images, medians of {args.repeats} interleaved "
          f"repeats after one warm-up pass each (with torch.compile's compilation: "
          f"{', '.join(f'{seconds:.1f} s' for name, seconds in compile_seconds.items() if 'compile' in name)}).\n")
    print("| teacher forward | seconds for 10,000 images | images/s | against the baseline | largest logit "
          "difference |\n|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median
        print(f"| {name} | {median:.3f} (spread {spread:.0%}) | {len(images) / median:,.0f} | "
              f"{reference / median:.2f}x | {error[name]:.1e} |")


if __name__ == "__main__":
    main()
