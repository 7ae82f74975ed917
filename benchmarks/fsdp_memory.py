"""Memory per process of a sharded (FSDP) distillation against a replicated (DDP) one, with 1, 2 and 4 processes.

The student is a freshly initialised SmolLM2-135M (all 30 blocks, 134.5 M parameters, float32, AdamW), the teacher
the SmolLM2-135M-Instruct GGUF (``make lm-data``), distilled with token-level KD through distillery's own engine
(``Trainer.train_epoch``, the sharding of :func:`distillery.engine.fsdp.shard_method`) on a global batch of 4 blocks
of 128 tokens of KJV text. Each process reports the bytes it holds of the student's parameters, gradients and AdamW
moments and of the teacher's parameters (its shards under FSDP), and its peak resident memory during the training
steps (Linux's VmHWM, reset after the models are built and sharded and the memory they freed is handed back to
the system with glibc's ``malloc_trim``; every process runs with glibc's mmap threshold fixed at 64 KiB, so large
freed blocks go back to the system instead of staying in its heaps). One process is the same under both.

Usage (CPU, gloo)::

    OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py --out runs/fsdp_memory

prints a Markdown table and writes ``results.json``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "benchmarks"))

SETTINGS = [("ddp", 1), ("ddp", 2), ("fsdp", 2), ("ddp", 4), ("fsdp", 4)]


def kib(field: str) -> int:
    """A /proc/self/status field in bytes (the kernel gives kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(parallel: str, steps: int, block: int, global_batch: int) -> None:
    import torch
    from language_models import kjv, smollm2

    from distillery.data.batch import Batch
    from distillery.data.tokenizer import load_tokenizer
    from distillery.engine import Trainer, build_optimizer
    from distillery.engine.distributed import end_distributed, setup_distributed
    from distillery.engine.fsdp import local_bytes, shard_method
    from distillery.methods import create_method
    from distillery.models.text_transformers import causal_lm, load_transformer

    context = setup_distributed("cpu").sharded(parallel)
    gguf = smollm2()
    tokenizer = load_tokenizer(str(gguf))
    text = kjv("mark1:1-mark16:20", Path(os.environ.get("TMPDIR", "/tmp")) / f"kjv-mark-{context.rank}.txt").read_text()
    ids = torch.tensor(tokenizer(text[:200_000])["input_ids"][: steps * global_batch * (block + 1)])
    ids = ids.reshape(steps * global_batch, block + 1)
    batches = [Batch({"input_ids": ids[at: at + global_batch, :-1]}, ids[at: at + global_batch, 1:],
                     torch.ones(global_batch, block, dtype=torch.bool), torch.arange(at, at + global_batch))
               for at in range(0, len(ids), global_batch)]

    torch.manual_seed(0)
    student = causal_lm((block,), len(tokenizer), base=str(gguf))
    teacher, _ = load_transformer(gguf, "causal_lm")
    method = create_method("token_kd", student, teacher)
    if context.fsdp:
        shard_method(method, torch.device("cpu"))
    optimizer = build_optimizer(method.trainable_parameters(), "adamw", lr=1e-4, weight_decay=0.0)
    trainer = Trainer(method, optimizer, None, epochs=1, device="cpu", progress=False, distributed=context)
    # The whole models were built before sharding; glibc keeps what they freed unless asked to return it, which
    # would leave their size in every process's resident memory whatever the training holds.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    resident_before = kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident memory
    started = time.perf_counter()
    trainer.train_epoch(context.shard(batches, training=True), 1)
    seconds = (time.perf_counter() - started) / steps
    student_parameters = list(method.student.parameters())
    record = {
        "parallel": parallel if context.active else "none", "processes": context.world_size, "rank": context.rank,
        "student_parameters": local_bytes(student_parameters),
        "student_gradients": local_bytes(p.grad for p in student_parameters if p.grad is not None),
        "optimizer_moments": local_bytes(value for state in optimizer.state.values() for value in state.values()
                                         if isinstance(value, torch.Tensor) and value.dim() > 0),
        "teacher_parameters": local_bytes(method.teacher.parameters()),
        "rss_before_training": resident_before, "peak_rss_training": kib("VmHWM"), "seconds_per_step": seconds,
    }
    records = context.gather(record)
    if context.is_main:
        print("RESULT " + json.dumps(records), flush=True)
    end_distributed()


def launch(parallel: str, processes: int, args) -> list[dict]:
    command = [__file__, "--worker", parallel, "--steps", str(args.steps), "--block", str(args.block),
               "--global-batch", str(args.global_batch)]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *command]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "benchmarks")]),
                   # glibc otherwise raises its mmap threshold after the first large frees and then keeps freed
                   # blocks (each gathered block, each reduction buffer) in its heaps: the resident memory measured
                   # the allocator's retention (4.1 GB for 4 FSDP processes), not what training holds (1.7 GB).
                   "MALLOC_MMAP_THRESHOLD_": "65536"}
    completed = subprocess.run([sys.executable, *command], env=environment, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"{parallel} x{processes} failed:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def table(results: list[list[dict]]) -> str:
    mib = 1024 ** 2
    rows = ["| processes | parallel | student parameters | gradients | AdamW moments | student total | teacher "
            "parameters | resident memory before training | peak resident memory in training | s/step |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for records in results:
        first = records[0]
        total = max(r["student_parameters"] + r["student_gradients"] + r["optimizer_moments"] for r in records)
        rows.append(f"| {first['processes']} | {first['parallel']} | {first['student_parameters'] / mib:,.0f} MiB | "
                    f"{first['student_gradients'] / mib:,.0f} MiB | {first['optimizer_moments'] / mib:,.0f} MiB | "
                    f"{total / mib:,.0f} MiB | {first['teacher_parameters'] / mib:,.0f} MiB | "
                    f"{max(r['rss_before_training'] for r in records) / mib:,.0f} MiB | "
                    f"{max(r['peak_rss_training'] for r in records) / mib:,.0f} MiB | "
                    f"{max(r['seconds_per_step'] for r in records):.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fsdp_memory"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--worker", choices=["ddp", "fsdp"])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.block, args.global_batch)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for parallel, processes in SETTINGS:
        results.append(launch(parallel, processes, args))
        print(f"{parallel} x{processes}: done", file=sys.stderr, flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
