"""Initialise a student from its teacher's weights, by matching names or by a layer map.

DistilBERT starts its 6-layer student from the 12-layer teacher by taking one layer in
two; `initialize_from_teacher(student, teacher, layer_map)` does the same for any pair of
`nn.Module`s and reports, tensor by tensor, what it copied and what it could not.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from distillery.errors import ModelError

# Enough paths to show what valid ones look like without flooding the one-line error.
_PATHS_SHOWN = 10


@dataclass
class InitReport:
    """What `initialize_from_teacher` did; every student state-dict tensor is in exactly one list.

    `copied` holds (student name, teacher name) pairs; `shape_mismatch` holds
    (student name, teacher name, student shape, teacher shape) for tensors left as they were;
    `missing` names student tensors with no teacher counterpart. The parameter counts
    cover parameters only (not buffers such as BN running statistics).
    Example: `initialize_from_teacher(student, teacher).summary()`.
    """

    copied: list[tuple[str, str]]
    shape_mismatch: list[tuple[str, str, tuple, tuple]]
    missing: list[str]
    copied_parameters: int = 0
    total_parameters: int = 0

    def summary(self) -> str:
        """One line of counts.

        Example: "copied 12 of 20 student tensors (1,234 of 5,678 parameters) from the teacher;
        2 shape mismatches; 6 without a teacher counterpart".
        """
        total = len(self.copied) + len(self.shape_mismatch) + len(self.missing)
        line = (
            f"copied {len(self.copied)} of {total} student tensors "
            f"({self.copied_parameters:,} of {self.total_parameters:,} parameters) from the teacher"
        )
        problems = []
        if self.shape_mismatch:
            count = len(self.shape_mismatch)
            problems.append(f"{count} shape mismatch{'es' if count != 1 else ''}")
        if self.missing:
            problems.append(f"{len(self.missing)} without a teacher counterpart")
        return "; ".join([line, *problems])


def initialize_from_teacher(
    student: nn.Module, teacher: nn.Module, layer_map: Mapping[str, str] | None = None
) -> InitReport:
    """Copy teacher weights and buffers into `student` in place, and report what was copied.

    Without `layer_map`, each student state-dict tensor (parameters and buffers, e.g. BN
    running statistics) is copied from the teacher tensor of the same name and shape.
    With `layer_map` (student module path -> teacher module path), a student tensor under a
    mapped path takes the teacher tensor under the mapped teacher path (the longest student
    path wins); tensors under no mapped path are left alone. Shapes that differ are reported,
    never copied. The student gets copies: changing the teacher later leaves it unchanged.
    Example, one block in two (teacher with 2 blocks per stage, student with 1)::

        report = initialize_from_teacher(student, teacher, {
            "stem": "stem", "layer1.0": "layer1.1", "layer2.0": "layer2.1", "classifier": "classifier",
        })
        print(report.summary())

    Raises `ModelError` for a map path that names no module, or a map that copies nothing.
    """
    student_state = student.state_dict()
    teacher_state = teacher.state_dict()
    if layer_map is None:
        pairs = {name: name for name in student_state}
    else:
        layer_map = _check_layer_map(layer_map, student, teacher)
        pairs = _mapped_names(student_state, layer_map)
    report = _plan(student_state, teacher_state, pairs, _parameter_names(student))
    if layer_map is not None and not report.copied:
        raise ModelError(
            f"layer_map {dict(layer_map)!r} copies no tensor from the teacher "
            f"({len(report.shape_mismatch)} shape mismatches, {len(report.missing)} without a counterpart); "
            "map student paths to teacher paths whose layers have the same shapes"
        )
    # Planning first and copying after means an error above leaves the student untouched.
    with torch.no_grad():
        for student_name, teacher_name in report.copied:
            # copy_ writes into the student's own storage (converting device and dtype),
            # so the two models never share memory.
            student_state[student_name].copy_(teacher_state[teacher_name])
    return report


def _parameter_names(model: nn.Module) -> set[str]:
    # remove_duplicate=False: a tied weight appears in the state dict under every name.
    return {name for name, _ in model.named_parameters(remove_duplicate=False)}


def _plan(
    student_state: Mapping[str, torch.Tensor],
    teacher_state: Mapping[str, torch.Tensor],
    pairs: Mapping[str, str],
    parameter_names: set[str],
) -> InitReport:
    """Sort every student tensor into copied, shape mismatch or missing, copying nothing yet."""
    report = InitReport(copied=[], shape_mismatch=[], missing=[])
    for student_name, student_tensor in student_state.items():
        is_parameter = student_name in parameter_names
        if is_parameter:
            report.total_parameters += student_tensor.numel()
        teacher_name = pairs.get(student_name)
        if teacher_name is None or teacher_name not in teacher_state:
            report.missing.append(student_name)
            continue
        student_shape = tuple(student_tensor.shape)
        teacher_shape = tuple(teacher_state[teacher_name].shape)
        if student_shape != teacher_shape:
            report.shape_mismatch.append((student_name, teacher_name, student_shape, teacher_shape))
            continue
        report.copied.append((student_name, teacher_name))
        if is_parameter:
            report.copied_parameters += student_tensor.numel()
    return report


def _strip_prefix(name: str, prefix: str) -> str | None:
    """The part of `name` after module path `prefix`, or None when `name` is not under it."""
    # No `name == prefix` case: prefixes are checked module paths, and a tensor never shares
    # its full name with a module (a module cannot hold a child and a tensor of one name).
    if prefix == "":  # the root module: every tensor is under it
        return name
    if name.startswith(prefix + "."):
        return name[len(prefix) + 1 :]
    return None


def _mapped_names(student_state: Mapping[str, Any], layer_map: Mapping[str, str]) -> dict[str, str]:
    """Student tensor name -> teacher tensor name, for tensors under a mapped student path."""
    # Longest first, so {"layer1": ..., "layer1.0": ...} sends layer1.0.* by the more specific entry.
    prefixes = sorted(layer_map, key=len, reverse=True)
    pairs: dict[str, str] = {}
    for name in student_state:
        for prefix in prefixes:
            rest = _strip_prefix(name, prefix)
            if rest is None:
                continue
            target = layer_map[prefix]
            pairs[name] = f"{target}.{rest}" if target else rest
            break
    return pairs


def _check_layer_map(layer_map: Any, student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    if not isinstance(layer_map, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in layer_map.items()
    ):
        raise ModelError(
            f"layer_map must map student module paths to teacher module paths (strings), got {layer_map!r}; "
            "e.g. {'layer1.0': 'layer1.1'}"
        )
    student_paths = [name for name, _ in student.named_modules()]
    teacher_paths = [name for name, _ in teacher.named_modules()]
    for student_path, teacher_path in layer_map.items():
        if student_path not in student_paths:
            raise ModelError(_unknown_path_message("key", student_path, "student", student_paths))
        if teacher_path not in teacher_paths:
            raise ModelError(_unknown_path_message("value", teacher_path, "teacher", teacher_paths))
    return dict(layer_map)


def _unknown_path_message(role: str, path: str, model_role: str, valid_paths: list[str]) -> str:
    """One line naming the bad path, a close match if any, and up to ten valid paths."""
    shown = [name for name in valid_paths if name]  # "" (the whole model) reads as nothing
    close = difflib.get_close_matches(path, shown, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(shown[:_PATHS_SHOWN]) + (", …" if len(shown) > _PATHS_SHOWN else "")
    return (
        f"layer_map {role} {path!r} is not a module path of the {model_role}{hint}; "
        f"valid module paths: {listed or 'none'}"
    )
