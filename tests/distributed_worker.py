"""What each process of the torchrun test runs: the Python API recording every step's samples, then the CLI.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUTPUT_DIR CONFIG.yaml``.
Each process writes ``rank<r>.safetensors`` and ``rank<r>.json`` (its steps' sample indices and history)
into OUTPUT_DIR, then runs ``distillery distill CONFIG.yaml`` into OUTPUT_DIR/distilled.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from distillery.app.steps.fit import fit_method
from distillery.cli import app
from distillery.data import Normalizer, load_dataset, train_val_split
from distillery.methods import create_method
from distillery.models import build_model

# Digits' 1221 training samples leave a last batch of 5: two processes split it unequally (3 and 2).
GLOBAL_BATCH = 64
EPOCHS = 2


def train_recording() -> tuple[dict[str, torch.Tensor], list[list[int]], list[dict]]:
    """Train an MLP on digits with :func:`fit_method`; the weights, each step's sample indices, the history."""
    train, _ = load_dataset("digits")
    train, val = train_val_split(train, 0.15, seed=0)
    normalizer = Normalizer.fit(train)
    train, val = normalizer.apply(train), normalizer.apply(val)
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden": [16]}, train.input_shape, train.num_classes)
    method = create_method("supervised", model)
    steps: list[list[int]] = []
    original_step = method.step

    def recording_step(batch):
        steps.append(batch.indices.tolist())
        return original_step(batch)

    method.step = recording_step  # an instance attribute: DDP's wrapper calls method.step and finds it
    result = fit_method(method, train, val, epochs=EPOCHS, batch_size=GLOBAL_BATCH, lr=0.003, seed=0,
                        device="cpu", progress=False)
    return {name: value.detach().clone() for name, value in result.model.state_dict().items()}, steps, result.history


def native_threads() -> list[str]:
    """The names of this process's threads, Python's and native ones (gloo's are pt_gloo_runloop, gloo_tcp_loop)."""
    tasks = Path("/proc/self/task")
    return sorted((task / "comm").read_text().strip() for task in tasks.iterdir()) if tasks.is_dir() else []


def main(output_dir: Path, config: str) -> None:
    rank = int(os.environ["RANK"])
    # Registered before distillery joins the process group, so it runs after distillery's own exit handler
    # (last registered, first run) has ended the group: which threads would live on into interpreter shutdown.
    atexit.register(lambda: (output_dir / f"rank{rank}-threads-at-exit.json").write_text(json.dumps(native_threads())))
    weights, steps, history = train_recording()
    save_file(weights, str(output_dir / f"rank{rank}.safetensors"))
    (output_dir / f"rank{rank}.json").write_text(json.dumps({"steps": steps, "history": history}))
    app(["distill", config, "--set", f"output_dir={output_dir / 'distilled'}"], standalone_mode=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
