"""What distillation costs over training the student alone: epoch-time ratios, where the time goes, memory.

For each student of the suite, one training epoch of (a) the student alone, (b) Hinton KD reading the
teacher-output cache and (c) Hinton KD with the live teacher, timed interleaved (a, b, c, a, b, c, ...)
so machine noise hits all three alike; medians of --repeats. One cached distillation epoch is run again
with each part of the step timed, to say where its time goes. Peak memory is this process's peak resident set.

    python benchmarks/speed.py --teacher runs/fashion_mnist/teacher [--repeats 3] [--quick] [--out speed.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distillery.app.config import DataConfig
from distillery.app.steps.prepared_data import prepare_data
from distillery.app.steps.fit import fit_method
from distillery.app.steps.transfer_batches import plan_transfer
from distillery.data import Augmentation
from distillery.methods import create_method
from distillery.models import build_model
from distillery.teachers import load_teacher

STUDENTS = {"MLP 128": {"name": "mlp", "hidden": [128]},
            "tiny CNN 12-24-48": {"name": "cnn", "channels": [12, 24, 48], "hidden": 32}}
def one_epoch(method, batches) -> float:
    started = time.perf_counter()
    fit_method(method, batches, epochs=1, lr=0.002, progress=False, seed=0)
    return time.perf_counter() - started


def profile_epoch(method, batches) -> dict[str, float]:
    """One epoch of the trainer's loop with each part timed: producing batches, the method's step (teacher
    lookup, student forward, losses), backward, optimizer step. Summed over the epoch, in seconds."""
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=0.002)
    method.train()
    parts = dict.fromkeys(["batches (index, normalise)", "step (lookup, forward, loss)", "backward",
                           "optimizer step"], 0.0)
    iterator = iter(batches)
    while True:
        mark = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        parts["batches (index, normalise)"] += time.perf_counter() - mark
        mark = time.perf_counter()
        output = method.step(batch)
        parts["step (lookup, forward, loss)"] += time.perf_counter() - mark
        mark = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        parts["backward"] += time.perf_counter() - mark
        mark = time.perf_counter()
        optimizer.step()
        parts["optimizer step"] += time.perf_counter() - mark
    parts["total"] = sum(parts.values())
    return parts


def measure(student_spec: dict, teacher, data, repeats: int, cache_dir: Path) -> dict:
    def plan(live: bool):
        return plan_transfer(data.train, teacher, augmentation=Augmentation(), transform=data.normalizer,
                             batch_size=128, seed=0, label_options={}, teacher_table=not live, cache_dir=cache_dir)

    started = time.perf_counter()
    # The first student builds the cache (the teacher's one pass over the transfer set); later ones open it.
    cached = plan(live=False)
    cache_seconds = time.perf_counter() - started
    live = plan(live=True)

    def method(kind: str):
        torch.manual_seed(0)
        student = build_model(student_spec, data.train.input_shape, data.train.num_classes)
        if kind == "student alone":
            return create_method("supervised", student)
        built = create_method("hinton", student, teacher, temperature=2.0, alpha=0.5)
        if kind == "distillation, cached teacher":
            built.use_precomputed_teacher_logits(cached.teacher_logits)
        return built

    batches = {"student alone": cached.batches, "distillation, cached teacher": cached.batches,
               "distillation, live teacher": live.batches}
    times: dict[str, list[float]] = {kind: [] for kind in batches}
    for _ in range(repeats):
        for kind in batches:
            times[kind].append(one_epoch(method(kind), batches[kind]))
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    alone = medians["student alone"]
    return {"epoch_seconds": times, "median_epoch_seconds": medians, "cache_seconds": cache_seconds,
            "ratio_cached": medians["distillation, cached teacher"] / alone,
            "ratio_live": medians["distillation, live teacher"] / alone,
            "profile_cached": profile_epoch(method("distillation, cached teacher"), cached.batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4,000 training images")
    parser.add_argument("--out", type=Path, default=Path("bench-out/speed.json"))
    args = parser.parse_args()
    teacher, metadata = load_teacher(args.teacher)
    data = prepare_data(DataConfig(dataset="fashion-mnist", val_fraction=0.1,
                                   train_limit=4000 if args.quick else None), metadata["preprocessing"])
    result = {"train_samples": len(data.train), "batch_size": 128, "repeats": args.repeats, "students": {}}
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, spec in STUDENTS.items():
            result["students"][name] = measure(spec, teacher, data, args.repeats, Path(cache_dir))
            measured = result["students"][name]
            print(f"{name}: cached {measured['ratio_cached']:.2f}x, live {measured['ratio_live']:.2f}x the "
                  f"student-alone epoch ({measured['median_epoch_seconds']['student alone']:.2f} s)", flush=True)
    result["teacher_pass_seconds"] = next(iter(result["students"].values()))["cache_seconds"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
