"""What a task is: the part of a run that depends on the kind of data. The run skeleton (:mod:`distillery.app.skeleton`)
asks a task for the data and teachers, the student, the batches and the test evaluation, and does the rest once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from distillery.app.config import RunConfig
from distillery.engine import RunDirectory
from distillery.engine.distributed import DistributedContext
from distillery.engine.trainer import BestEpoch
from distillery.errors import ConfigError
from distillery.methods import Method, refusal_for_data


@dataclass
class Prepared:
    """A task's data and teachers, ready to build the student and its method.

    ``teacher`` is the one module a method distils from (an ensemble or label-space merge of several), or None;
    ``first_teacher`` is what init_from_teacher copies from (released once the student is built). ``input_shape`` is one sample's shape (token blocks:
    their length) and ``num_classes`` what the student predicts (a language model: its vocabulary).
    """

    data: Any
    input_shape: tuple[int, ...]
    num_classes: int
    teacher: nn.Module | None = None
    first_teacher: nn.Module | None = None
    teachers: list[Any] = field(default_factory=list)
    teacher_key: str | None = None  # a language-model teacher's files, digested: its cached targets' key
    stored_targets: Any = None  # a language model's targets found (or read from a file) before any teacher loaded


class Task:
    """A kind of data and what it takes to train on it. Subclasses: images and tables, next-token prediction, text
    classification.

    ``name`` is recorded in model.json; ``kind_of_data`` is what methods declare they take
    (:class:`~distillery.methods.Needs`); ``best`` says which validation metric chooses the best epoch, in which
    direction.
    """

    name = ""
    kind_of_data = ""
    best = BestEpoch()

    def check(self, config: RunConfig) -> None:
        """Refuse a config this task cannot run before anything is loaded; the method must take this data."""
        if config.distill is not None and self.kind_of_data not in config.distill.needs.data:
            raise ConfigError(refusal_for_data(config.distill.method, self.kind_of_data))

    def prepare(self, config: RunConfig) -> Prepared:
        """The data (train, validation, test) and the teachers, checked against each other."""
        raise NotImplementedError

    def student(self, config: RunConfig, prepared: Prepared) -> nn.Module:
        """The student, built after the run's seed is set, without adapters: the skeleton adds model.lora's after
        init_from_teacher has copied the teacher's weights into the modules they wrap."""
        raise NotImplementedError

    def metadata(self, config: RunConfig, prepared: Prepared, model: nn.Module) -> dict[str, Any]:
        """What model.json records beside the weights."""
        raise NotImplementedError

    def default_layer_map(self, model: nn.Module, teacher: nn.Module) -> dict[str, str] | None:
        """init_from_teacher's student -> teacher module map when the config gives none (None: same names)."""
        return None

    def training_batches(self, config: RunConfig, prepared: Prepared, method: Method, context: DistributedContext,
                         metadata: dict[str, Any]) -> tuple[Iterable, str | None]:
        """The student's training batches, with the teacher's outputs handed to the method where they are computed
        ahead (by rank 0 first under torchrun), and a line saying where they came from (or None)."""
        raise NotImplementedError

    def validation_batches(self, config: RunConfig, prepared: Prepared) -> Iterable | None:
        raise NotImplementedError

    def save_beside(self, run_dir: RunDirectory, prepared: Prepared) -> None:
        """Files the run directory keeps beside the weights (a tokenizer); none by default."""

    def describe(self, prepared: Prepared) -> str | None:
        """One line about the data, shown when the run starts (None: nothing to say)."""
        return None

    def test_evaluation(self, config: RunConfig, prepared: Prepared, model: nn.Module,
                        teacher: nn.Module | None) -> dict[str, Any]:
        """``model``'s metrics on the test split, with agreement with ``teacher`` when given."""
        raise NotImplementedError
