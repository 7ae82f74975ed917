"""Helpers for the command-line tests: invoking the CLI, writing configs, checking one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from distillery.cli import app

RUN_FILES = ("config.yaml", "metrics.jsonl", "model.safetensors", "model.json", "last.safetensors", "last.json",
             "evaluation.json")
MODEL_JSON_KEYS = ("format", "version", "role", "architecture", "input_shape", "num_classes", "class_names",
                   "preprocessing", "dataset", "parameters", "epoch", "metrics", "config")
EVALUATION_KEYS = ("name", "role", "split", "samples", "accuracy", "nll", "ece", "parameters", "size_bytes",
                   "reliability")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIGITS_TEST_SAMPLES = 360  # ceil(20% of scikit-learn's 1797 digits)
TEACHER_EPOCHS = 2

runner = CliRunner()


# ---------------------------------------------------------------- helpers


def invoke(*args: str | Path):
    return runner.invoke(app, [str(arg) for arg in args])


def run_config(output_dir: Path, **sections) -> dict:
    """A tiny, fast run configuration; keyword arguments replace whole top-level sections."""
    document = {
        "output_dir": str(output_dir),
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.01},
        "measure_latency": False,
        "progress": False,
    }
    document.update(sections)
    return document


def write_yaml(path: Path, document: dict | str) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def assert_ok(result) -> None:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
    )


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one non-empty stderr line starting with 'error:' that holds every fragment, no traceback."""
    # CliRunner catches an escaped exception itself (exit code 1, nothing printed): that is a traceback for a user.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"uncaught {result.exception!r}: a user would see a traceback, not one 'error:' line")
    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    message = lines[0]
    assert message.startswith("error: ") and len(message) > len("error: ") + 10, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in result.stdout + result.stderr
    return message


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, to prove a failed command left a directory alone."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.iterdir()) if path.is_file()}


def write_npz_dataset(directory: Path, num_classes: int = 3, seed: int = 0) -> Path:
    """train.npz / test.npz with 8x8 one-channel images (like digits) and labels 0..num_classes-1."""
    directory.mkdir(parents=True)
    generator = np.random.default_rng(seed)
    for name, count in (("train", 90), ("test", 30)):
        inputs = generator.random((count, 1, 8, 8), dtype=np.float32)
        labels = np.arange(count, dtype=np.int64) % num_classes  # every class present
        np.savez(directory / f"{name}.npz", x=inputs, y=labels)
    return directory
