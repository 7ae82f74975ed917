"""The task of image and table classifiers: data in the student's preprocessing, teachers fed their own, the transfer
batches with the teacher's outputs live, cached or read from a file, accuracy and calibration on the test split."""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.steps.evaluation import evaluate
from distillery.app.steps.load_teachers import teachers_and_data
from distillery.app.steps.transfer_batches import transfer_plan
from distillery.app.steps.write import run_metadata
from distillery.app.tasks.task import Prepared, Task
from distillery.data import BatchIterator
from distillery.engine.distributed import DistributedContext
from distillery.errors import ConfigError
from distillery.methods import Method
from distillery.models import build_model
from distillery.teachers.outputs_table import OutputsTable


# Data settings of text runs, which image and table runs would otherwise ignore without a word.
TEXT_SETTINGS = ("tokenizer", "block_length", "text_column", "chat_template", "pack")


class ImageTask(Task):
    name = "classification"
    kind_of_data = "images"

    def check(self, config: RunConfig) -> None:
        super().check(config)
        unused = [name for name in TEXT_SETTINGS if getattr(config.data, name) not in (None, False)]  # pack: false is unset
        if unused:
            raise ConfigError(f"data.{unused[0]} is for text runs (data.dataset: text, chat or text_classification), "
                              f"not {config.data.dataset!r}; remove it")

    def prepare(self, config: RunConfig) -> Prepared:
        teachers, data, teacher = teachers_and_data(config)
        # The evaluation data's classes, not the transfer set's: a student distilled without some class still
        # predicts it.
        return Prepared(data=data, input_shape=tuple(data.test.input_shape), num_classes=data.test.num_classes,
                        teacher=teacher, first_teacher=teachers[0].model if teachers else None, teachers=teachers)

    def student(self, config: RunConfig, prepared: Prepared) -> nn.Module:
        return build_model(config.model, prepared.input_shape, prepared.num_classes, adapters=False)

    def metadata(self, config: RunConfig, prepared: Prepared, model: nn.Module) -> dict[str, Any]:
        return run_metadata(config, prepared.data, model)

    def training_batches(self, config: RunConfig, prepared: Prepared, method: Method, context: DistributedContext,
                         metadata: dict[str, Any]) -> tuple[Iterable, str | None]:
        # Rank 0 computes and caches the teacher's outputs first; the others then read its cache.
        plan = context.main_first(lambda: transfer_plan(config, prepared.data, prepared.teachers, prepared.teacher))
        plan.apply_to(method)
        return plan.batches, plan.note

    def validation_batches(self, config: RunConfig, prepared: Prepared) -> Iterable | None:
        return BatchIterator(prepared.data.val, 512) if prepared.data.val is not None else None

    def test_evaluation(self, config: RunConfig, prepared: Prepared, model: nn.Module,
                        teacher: nn.Module | None) -> dict[str, Any]:
        # A teacher known only by its outputs on the transfer set has none on the test split to agree with.
        teacher = None if isinstance(teacher, OutputsTable) else teacher
        return evaluate(model, BatchIterator(prepared.data.test, 512), teacher=teacher,
                        latency=config.measure_latency)

