"""What every method shares: the step result, the frozen-teacher rule, its options and needs, the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from distillery.data.batch import Batch
from distillery.errors import ConfigError
from distillery.registry import Registry
from distillery.teachers import freeze

METHODS: Registry = Registry("method")

# The kinds of data a method may take: image and table classifiers, language models (next-token prediction),
# text classifiers.
DATA_KINDS = frozenset({"images", "next_token", "text_classification"})


@dataclass(frozen=True)
class Needs:
    """What a method needs and reads, declared once on its class; the application reads these, never its name.

    ``teacher``: True, a pretrained teacher (distill.teacher); False, it refuses one. ``labels``: "optional"
    (soft targets alone will do), "required" (some labelled samples) or "every_sample". ``teacher_logits``: it
    can read the teacher's logits by sample index, so they may come from a cache or a file of outputs (the run
    hands them to ``use_precomputed_teacher_logits(table)``). ``teacher_features``: it reads teacher features at
    the layers its options name (``teacher_layers_read``), cached with the logits and handed to
    ``use_precomputed_teacher_outputs(logits, features)``. ``hooks``: it reads
    the student's features through forward hooks (torch.compile is refused). ``data``: the kinds of data it takes
    (:data:`DATA_KINDS`). ``generations``: it learns from one teacher's logits alone, so born-again generations
    can use it.
    """

    teacher: bool = True
    labels: Literal["optional", "required", "every_sample"] = "optional"
    teacher_logits: bool = False
    teacher_features: bool = False
    hooks: bool = False
    data: frozenset[str] = DATA_KINDS
    generations: bool = False


@dataclass(frozen=True)
class BuildContext:
    """What a run knows that a method's options do not: one sample's shape, the classes, train.label_smoothing,
    whether the transfer set has labels, and how to build a model trained beside the student
    (``new_model(spec, setting, seed_offset)``)."""

    input_shape: tuple[int, ...]
    num_classes: int
    label_smoothing: float = 0.0
    labels: bool = True
    new_model: Callable[[dict[str, Any], str, int], nn.Module] | None = None


class MethodOptions(BaseModel):
    """A method's own options, as the config's ``distill:`` section gives them (null: the default).

    ``label_weight`` names the option that weighs the hard-label term, which is 0 on a transfer set without
    labels. :meth:`keywords` turns the options into the method's constructor keywords: the one place where config
    becomes keyword arguments.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    label_weight: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data

    def keywords(self, context: BuildContext) -> dict[str, Any]:
        """The constructor's keywords (besides student and teacher) for a run described by ``context``."""
        keywords = {name: getattr(self, name) for name in type(self).model_fields}
        if self.label_weight is not None and not context.labels:
            keywords[self.label_weight] = 0.0  # no labels, no hard-label term: the soft term has all the weight
        return keywords

    def view_mix(self) -> str | None:
        """How the method mixes each batch before teacher and student see it (None: not at all)."""
        return None

    def teacher_layers_read(self) -> list[str]:
        """The teacher module paths whose features the method reads."""
        return []

    def teacher_targets(self, seed: int = 0, storage: str = "float32") -> Any:
        """The :class:`~distillery.teachers.token_targets.TargetSpec` of the top-k or sampled teacher targets the
        method learns from (top-k values kept in ``storage``, draws seeded by ``seed``), or None: the teacher's
        whole distributions."""
        return None

    def peer_specs(self) -> list[dict[str, Any]]:
        """The model specs of the models the method trains beside the student, in the order it names them."""
        return []

    def in_ensemble_member(self, index: int) -> "MethodOptions":
        """These options with teacher layer paths pointed into member ``index`` of an ensemble teacher."""
        return self


@dataclass
class StepOutput:
    """One training step's result: the loss to minimise, the student's logits, and loss parts to log.

    ``logits`` is None for a step that never held them whole (projected a chunk at a time). ``teacher_logits``, where
    the step used a teacher's, lets a non-finite loss be traced to its source.
    """

    loss: torch.Tensor
    logits: torch.Tensor | None
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_logits: torch.Tensor | None = None


class Method(nn.Module):
    """A student plus whatever a method adds to train it.

    Subclasses implement :meth:`step`. Teachers given to :meth:`add_teacher` are frozen
    and stay in eval mode even when the method is put in train mode, so the trainer can
    call ``method.train()`` without knowing which parts are teachers.
    """

    needs: ClassVar[Needs] = Needs(teacher=False)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    name = ""  # the registered name (set when built), for messages

    @property
    def uses_feature_hooks(self) -> bool:
        return self.needs.hooks

    @classmethod
    def build(cls, student: nn.Module, teacher: nn.Module | None, options: MethodOptions,
              context: BuildContext) -> "Method":
        """The method for a configured run: its options as keywords, the teacher where it takes one."""
        keywords = options.keywords(context)
        return cls(student, teacher, **keywords) if cls.needs.teacher else cls(student, **keywords)

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self._teacher_names: list[str] = []

    def add_teacher(self, name: str, teacher: nn.Module) -> None:
        self.add_module(name, freeze(teacher))
        self._teacher_names.append(name)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        """The submodules added with :meth:`add_teacher`: frozen, so a saved training state leaves them out."""
        return tuple(self._teacher_names)

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        for name in self._teacher_names:
            getattr(self, name).eval()
        return self

    def peer_models(self) -> dict[str, nn.Module]:
        """Models trained beside the student (online methods), by name; each is validated, kept at its best
        epoch and saved on its own. They are trainable, unlike teachers, so they are in :meth:`trainable_parameters`.
        """
        return {}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def use_shared_rows(self, rows: int) -> None:
        """Told when the teacher's and the student's output layers differ in size beyond one tokenizer's ``rows``
        tokens (padding rows); a method that compares their outputs row by row overrides it, the others refuse."""
        raise ConfigError(f"method {self.name or type(self).__name__} needs the teacher's and the student's output "
                          f"layers of one size; leave model.vocab_size out (the student's head follows the teacher's)")

    def fsdp_refusal(self) -> str | None:
        """Why this method, as configured, cannot run sharded (``train.parallel: fsdp``), or None. Every forward of a
        sharded model is a collective, so a step whose forwards differ between processes cannot be sharded."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Told at the start of every epoch (counted from 1); methods with schedules override it."""

    def step(self, batch: Batch) -> StepOutput:
        """One training step on ``batch`` (see :class:`~distillery.data.batch.Batch`: inputs a tensor or a
        mapping of tensors, labels per sample or per position, a mask of what counts, sample indices)."""
        raise NotImplementedError
