"""A teacher given as an ONNX model, run in ONNX Runtime on the CPU.

The model is a file from anyone: ONNX Runtime reads it as a graph of operators, so nothing in it names Python
code that runs, and nothing is unpickled. The module holds no parameters, so it is frozen by construction and
never enters an optimizer; its outputs carry no gradient.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import nn

from distillery.errors import ModelError
from distillery.models.onnx_session import inference_session
from distillery.teachers.frozen import freeze
from distillery.user_code import first_line

# The float input types a teacher's inputs can be cast to without changing what they mean.
_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _static(dimension: Any) -> int | None:
    """A dimension's size, or None when the graph leaves it open (a name such as "batch", or unknown)."""
    return dimension if isinstance(dimension, int) and dimension > 0 else None


def _shape_text(shape: tuple[int | None, ...]) -> str:
    """A shape as Python prints a tuple, "?" for an open dimension: ``(?, 28, 28)``, ``(12,)``."""
    sizes = ["?" if size is None else str(size) for size in shape]
    return "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"


def _session(path: Path) -> onnxruntime.InferenceSession:
    try:
        return inference_session(path)
    except Exception as error:  # ONNX Runtime's errors (InvalidProtobuf, InvalidGraph, Fail...) derive from Exception
        raise ModelError(f"ONNX Runtime cannot load {path} ({first_line(error)}); give an .onnx model file, "
                         "e.g. one written by torch.onnx.export") from None


class OnnxTeacher(nn.Module):
    """An ONNX classifier as a frozen teacher: ``forward(inputs [B, ...] float) -> logits [B, C] float32``.

    The graph must take one tensor whose first dimension is the batch, and give ``[B, C]`` as its first output.
    A dynamic batch dimension takes any batch at once; a batch dimension fixed to N is run in chunks of N, the
    last one padded with zeros and its padding rows dropped. The logits land on the inputs' device.

    Raises ModelError (one line) for a missing file, a file ONNX Runtime cannot load, a graph with more than one
    input or a non-float input, a first output that is not ``[B, C]``, and inputs whose per-sample shape is not
    the graph's.

    Example::

        teacher = OnnxTeacher("teacher.onnx")
        logits = teacher(torch.randn(8, 1, 28, 28))   # [8, 10]
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"ONNX teacher {self.path} does not exist; give the path of an .onnx file")
        self._open()
        self.eval()

    def _open(self) -> None:
        self._session = _session(self.path)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            names = ", ".join(node.name for node in inputs)
            raise ModelError(f"{self.path} takes {len(inputs)} inputs ({names}); an ONNX teacher takes one tensor "
                             "[B, ...]: export the model with a single input")
        self._input_name, shape = inputs[0].name, list(inputs[0].shape or [])
        if inputs[0].type not in _INPUT_TYPES or not shape:
            raise ModelError(f"{self.path} takes {inputs[0].type} of shape {shape}; an ONNX teacher takes a float "
                             "tensor [B, ...] with the batch first")
        self._input_type = _INPUT_TYPES[inputs[0].type]
        self._batch_size = _static(shape[0])  # None: any batch at once
        self._sample_shape = tuple(_static(size) for size in shape[1:])
        self._output_name, output_shape = outputs[0].name, list(outputs[0].shape or [])
        if len(output_shape) != 2:
            raise ModelError(f"{self.path} gives {outputs[0].name!r} of shape {output_shape}, not [B, C]; an ONNX "
                             "teacher's first output must be one row of logits per sample")
        self._classes = _static(output_shape[1])

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample the graph takes, e.g. ``(1, 28, 28)``; None for a dimension it leaves open."""
        return self._sample_shape

    @property
    def num_classes(self) -> int | None:
        """The number of classes when the graph's output fixes it, else None."""
        return self._classes

    @property
    def batch_size(self) -> int | None:
        """The batch size the graph is fixed to, or None when its batch dimension is dynamic."""
        return self._batch_size

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise ModelError(f"ONNX teacher {self.path} takes one tensor [B, ...], not {type(inputs).__name__}")
        sample = tuple(inputs.shape[1:])
        if len(sample) != len(self._sample_shape) or any(
                size is not None and size != given for size, given in zip(self._sample_shape, sample)):
            raise ModelError(f"ONNX teacher {self.path} takes samples of shape {_shape_text(self._sample_shape)} "
                             f"but got {_shape_text(sample)}; feed it the data it was exported for")
        # Through float32 first: numpy has no bfloat16, and the graph's own float type may differ from the batch's.
        array = inputs.detach().to("cpu", torch.float32).numpy().astype(self._input_type, copy=False)
        logits = self._run_in_chunks(np.ascontiguousarray(array))
        return torch.from_numpy(logits).to(inputs.device, torch.float32)

    def _run_in_chunks(self, array: np.ndarray) -> np.ndarray:
        if len(array) == 0:
            return np.zeros((0, self._classes or 0), dtype=np.float32)
        if self._batch_size is None:
            return self._run(array)
        size, parts = self._batch_size, []
        for start in range(0, len(array), size):
            chunk = array[start:start + size]
            padding = np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            parts.append(self._run(np.concatenate([chunk, padding]))[:len(chunk)])
        return np.concatenate(parts)

    def _run(self, array: np.ndarray) -> np.ndarray:
        try:
            logits = self._session.run([self._output_name], {self._input_name: array})[0]
        except Exception as error:  # ONNX Runtime's errors derive from Exception only
            raise ModelError(f"ONNX Runtime could not run {self.path} on a batch of shape {array.shape} "
                             f"({first_line(error)}); check the inputs it was exported for") from None
        if logits.ndim != 2 or len(logits) != len(array):
            raise ModelError(f"{self.path} gave outputs of shape {logits.shape} for {len(array)} samples, "
                             "not [B, C]; an ONNX teacher's first output must be one row of logits per sample")
        return np.asarray(logits, dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # A session cannot be copied; a copy (copy.deepcopy, as latency measurement makes) opens the file again.
        state = dict(self.__dict__)
        state.pop("_session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._open()

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, input_shape={_shape_text(self._sample_shape)}, num_classes={self._classes}"


def load_onnx_teacher(path: str | Path) -> tuple[OnnxTeacher, dict[str, Any]]:
    """An ONNX model as a frozen teacher, with metadata shaped like a checkpoint's ``model.json``.

    Metadata: ``input_shape`` (one sample's shape; None for a dimension the graph leaves open), ``num_classes``
    (from the output's shape, else from running one zero sample when the input shape is fully known, else None),
    ``preprocessing`` None (an ONNX file records none: raw inputs unless the caller sets the teacher's own) and
    ``architecture`` ``{"name": "onnx", "path": ...}``. Raises ModelError as :class:`OnnxTeacher` does.

    Example::

        teacher, metadata = load_onnx_teacher("teacher.onnx")
        metadata["num_classes"]   # 10
    """
    teacher = freeze(OnnxTeacher(path))
    classes = teacher.num_classes
    if classes is None and all(size is not None for size in teacher.input_shape):
        with torch.no_grad():
            classes = int(teacher(torch.zeros(1, *teacher.input_shape)).shape[1])
    metadata = {"input_shape": list(teacher.input_shape), "num_classes": classes, "preprocessing": None,
                "architecture": {"name": "onnx", "path": str(path)}}
    return teacher, metadata
