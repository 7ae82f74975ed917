"""A method is one file: this one defines and registers a method, and runs it through a YAML config and
`distillery distill` with no change anywhere else in the package."""
from __future__ import annotations

import json

import torch
import yaml
from pydantic import Field
from torch import nn

from cli_helpers import assert_ok, assert_user_error, invoke, run_config, write_yaml
from distillery.data.batch import Batch, counted_positions, model_logits
from distillery.losses import soft_target_kl
from distillery.methods import METHODS, Method, MethodOptions, Needs, StepOutput, method_names

TEACHER_LOOKUPS: list[bool] = []  # per step: whether the teacher's logits came from a table rather than the teacher


class SoftTargetsOnlyOptions(MethodOptions):
    softness: float = Field(3.0, gt=0.0, description="the temperature of both distributions")


@METHODS.register("soft_targets_only")
class SoftTargetsOnly(Method):
    """T² · KL(teacher ‖ student) at temperature ``softness``, and no hard-label term."""

    Options = SoftTargetsOnlyOptions
    needs = Needs(teacher=True, teacher_logits=True, data=frozenset({"images"}))

    def __init__(self, student: nn.Module, teacher: nn.Module, *, softness: float = 3.0) -> None:
        super().__init__(student)
        self.add_teacher("teacher", teacher)
        self.softness = softness
        self.teacher_table = None

    def use_precomputed_teacher_logits(self, logits) -> None:
        self.teacher_table = logits

    def step(self, batch: Batch) -> StepOutput:
        TEACHER_LOOKUPS.append(self.teacher_table is not None)
        if self.teacher_table is not None:
            teacher_logits = self.teacher_table[batch.indices].to(batch.device, torch.float32)
        else:
            with torch.no_grad():
                teacher_logits = model_logits(self.teacher, batch.inputs)
        student_logits = model_logits(self.student, batch.inputs)
        student_rows, teacher_rows = counted_positions(batch.mask, student_logits, teacher_logits)
        loss = soft_target_kl(student_rows, teacher_rows, self.softness)
        return StepOutput(loss, student_logits, {"kd": loss.detach()}, teacher_logits)


def distill_config(tmp_path, teacher_run, **method):
    return write_yaml(tmp_path / "new.yaml", run_config(
        tmp_path / "student", model={"name": "mlp", "hidden": [16]},
        train={"epochs": 3, "batch_size": 64, "lr": 0.01},
        distill={"teacher": str(teacher_run), "method": "soft_targets_only", **method}))


def test_a_method_defined_in_one_file_runs_through_a_yaml_config_and_the_cli(tmp_path, teacher_run):
    TEACHER_LOOKUPS.clear()
    assert "soft_targets_only" in method_names()
    assert_ok(invoke("distill", distill_config(tmp_path, teacher_run, softness=2.0)))
    run_dir = tmp_path / "student"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["distill"]
    assert (saved["method"], saved["softness"]) == ("soft_targets_only", 2.0)  # written flat, as it was read
    # needs.teacher_logits: the run computed the teacher's logits once and the method read them by sample index.
    assert TEACHER_LOOKUPS and all(TEACHER_LOOKUPS)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["role"] == "distilled"
    assert evaluation["agreement"] > 0.5 and evaluation["accuracy"] > 0.5  # it learned from soft targets alone


def test_the_new_methods_options_and_needs_are_checked_like_every_methods(tmp_path, teacher_run):
    assert_user_error(invoke("distill", distill_config(tmp_path, teacher_run, softness=-1)),
                      "distill.softness", "greater than 0")
    assert_user_error(invoke("distill", distill_config(tmp_path, teacher_run, alpha=0.5)),
                      "method 'soft_targets_only' does not take alpha; it takes: softness")
    assert_user_error(invoke("distill", distill_config(tmp_path, teacher_run, softnes=2)),
                      "unknown key 'distill.softnes'", "did you mean 'softness'")
    without_teacher = run_config(tmp_path / "student", distill={"method": "soft_targets_only"})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "alone.yaml", without_teacher)),
                      "method 'soft_targets_only' needs a teacher")
    assert not (tmp_path / "student").exists()  # refused before the run directory was made
