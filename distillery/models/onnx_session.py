"""ONNX Runtime sessions as every part of the package opens them: CPU, a set number of threads, errors only."""
from __future__ import annotations

from pathlib import Path

import onnxruntime
import torch

from distillery.errors import ConfigError

# Only errors: a session otherwise warns on stderr about graph details a user cannot act on.
_ERRORS_ONLY = 3


def inference_session(path: str | Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU session for the ONNX model at ``path`` with ``threads`` intra-op threads (default: torch's).

    Torch's thread count by default, so a latency here compares with one measured in PyTorch.

    Example::

        session = inference_session("runs/distilled/model.onnx")
        logits = predict_logits(session, inputs)
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = _ERRORS_ONLY
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
