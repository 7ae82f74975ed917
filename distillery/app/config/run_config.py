"""The config step, the whole run: one YAML file, validated by pydantic, describing one run (every key: README.md, "Configuration")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from distillery.app.config.sections import (
    AugmentConfig,
    DataConfig,
    Strict,
    TrainConfig,
    TransferConfig,
    require_model_name,
)
from distillery.app.config.distill import DistillConfig

__all__ = ["AugmentConfig", "DataConfig", "DistillConfig", "RunConfig", "TrainConfig", "TransferConfig"]


class RunConfig(Strict):
    output_dir: str = Field(..., description="the run's own directory: new, empty, or an earlier run's")
    allow_factories: list[str] = Field(
        default_factory=list, description="package.module:function factories that checkpoints this run loads "
                                          "(teachers) may name as their architecture; only built-in ones otherwise")
    seed: int = 0
    device: str = "auto"
    role: Optional[Literal["teacher", "scratch", "distilled"]] = Field(
        None, description="how the report labels the run; default: scratch for train, distilled for distill")
    data: DataConfig = DataConfig()
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "mlp"})
    train: TrainConfig = TrainConfig()
    distill: Optional[DistillConfig] = None
    transfer: Optional[TransferConfig] = None
    measure_latency: bool = True
    progress: bool = True

    @model_validator(mode="after")
    def _transfer_needs_a_teacher(self) -> "RunConfig":
        if self.transfer is not None and self.distill is None and not self.transfer.labels:
            raise ValueError("transfer.labels: false leaves only soft targets, which need a teacher; add a distill: "
                             "section (without one, transfer: chooses the labelled samples a student trains on)")
        mixes = self.distill is not None and self.distill.options.view_mix() is not None
        if self.distill is not None and self.distill.teacher_views and not self.data.augment.enabled and not mixes:
            raise ValueError("teacher_views fixes augmented views, but data.augment is off, so the teacher's outputs "
                             "are cached for the plain inputs anyway; remove distill.teacher_views")
        weight = self.distill.options.label_weight if self.distill is not None else None
        given = self.distill.options.model_fields_set if self.distill is not None else set()
        if self.transfer is not None and not self.transfer.labels and weight in given \
                and getattr(self.distill.options, weight) != 0.0:
            raise ValueError(f"transfer.labels is false, so there is no hard-label term for distill.{weight} "
                             f"({getattr(self.distill.options, weight)}) to weigh: without labels {weight} is 0 and "
                             f"the soft term has all the weight; remove distill.{weight}")
        partly_labelled = self.transfer is not None and (
            not self.transfer.labels or (self.transfer.labeled_fraction or 1.0) < 1.0)
        if partly_labelled and self.distill is not None and self.distill.needs.labels == "every_sample":
            raise ValueError(f"method {self.distill.method!r} needs every transfer sample labelled (dkd splits every "
                             "distribution at the true class); use 'hinton' or 'dist', or drop labels: false / "
                             "labeled_fraction")
        return self

    @model_validator(mode="after")
    def _self_distillation_has_its_data(self) -> "RunConfig":
        if self.transfer is None or self.distill is None:
            return self
        if self.distill.generations is not None:
            raise ValueError("generations train every generation on the training split; remove transfer:")
        if self.distill.needs.labels != "optional" and not self.transfer.labels:
            raise ValueError(f"method {self.distill.method} needs labels (its models learn from them, not from a "
                             "teacher); set transfer.labels: true")
        return self

    @model_validator(mode="after")
    def _generations_are_not_sharded(self) -> "RunConfig":
        if self.train.parallel == "fsdp" and self.distill is not None and self.distill.generations is not None:
            raise ValueError("born-again generations (distill.generations) run with train.parallel: ddp; remove "
                             "parallel: fsdp")
        return self

    @field_validator("model")
    @classmethod
    def _model_has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        return require_model_name(value)

    @field_validator("output_dir")
    @classmethod
    def _output_dir_names_a_directory(cls, value: str) -> str:
        # "" and "." would make the current folder the run's, and a run replaces its own files there.
        if not value.strip() or Path(value) == Path("."):
            raise ValueError(f"output_dir {value!r} names the current folder; give the run a directory of its "
                             "own, e.g. runs/student")
        return value

    @field_validator("allow_factories")
    @classmethod
    def _factories_are_named(cls, value: list[str]) -> list[str]:
        for name in value:
            module, _, function = name.partition(":")
            if not module or not function:
                raise ValueError(f"{name!r} is not a factory name; write package.module:function")
        return value
