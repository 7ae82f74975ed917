"""ONNX Runtime, the deployment runtime: sessions, predictions over batches, latency and throughput."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime
import torch

from distillery.data import ArrayDataset
from distillery.eval.latency import measurement_environment, time_inference


def predict_logits(session: onnxruntime.InferenceSession, inputs: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The model's outputs on ``inputs`` ([N, ...] float32), run in batches of ``batch_size``.

    Example: ``predict_logits(session, test.inputs).argmax(1)``
    """
    name = session.get_inputs()[0].name
    array = inputs.detach().cpu().numpy().astype(np.float32, copy=False)
    batches = [session.run(None, {name: array[start:start + batch_size]})[0]
               for start in range(0, len(array), batch_size)]
    return np.concatenate(batches)


def session_accuracy(session: onnxruntime.InferenceSession, dataset: ArrayDataset) -> tuple[float, np.ndarray]:
    """Top-1 accuracy on ``dataset`` and the predicted classes.

    Example: ``accuracy, predictions = session_accuracy(session, source.data.test)``
    """
    predictions = predict_logits(session, dataset.inputs).argmax(axis=1)
    return float((predictions == dataset.labels.numpy()).mean()), predictions


def session_latency(session: onnxruntime.InferenceSession, input_shape: Sequence[int],
                    batch1_repeats: int = 200) -> dict[str, Any]:
    """Batch-1 median and p95 latency (ms) and batch-256 throughput (samples/s), with the keys of
    :func:`distillery.eval.latency.measure_latency` (stability, threads, CPU, torch version), measured in
    ONNX Runtime; ``runtime`` names its version.

    Example: ``session_latency(session, (1, 28, 28))["batch1_median_ms"]``
    """
    name = session.get_inputs()[0].name
    timings = time_inference(lambda inputs: session.run(None, {name: inputs}), input_shape,
                             batch1_repeats=batch1_repeats, to_input=lambda tensor: tensor.numpy())
    threads = session.get_session_options().intra_op_num_threads
    return {**timings, **measurement_environment(threads), "runtime": f"onnxruntime {onnxruntime.__version__}"}


def graph_parameters(path: str | Path) -> int:
    """Number of floating-point weights stored in the ONNX graph at ``path`` (its initializers).

    Example: ``graph_parameters("runs/distilled/model.onnx")``
    """
    model = onnx.load(str(path))
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer if tensor.data_type in floating)
