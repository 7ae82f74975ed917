"""The text classification task: labelled texts, a sequence classifier, accuracy and calibration beside the teacher's."""
from __future__ import annotations

from typing import Any

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.steps.evaluation import evaluate
from distillery.app.tasks.task import Prepared
from distillery.app.tasks.text_class_data import TextClassData, classifier_spec, prepare_text_classes
from distillery.app.tasks.text_task import TextTask
from distillery.data.text_classes import TextClassBatches
from distillery.errors import ConfigError


class TextClassificationTask(TextTask):
    """Text classification (``data.dataset: text_classification``): a sequence classifier, accuracy and calibration
    like any classifier."""

    model_kind = "sequence_classifier"
    name = "text_classification"
    kind_of_data = "text_classification"

    def load_data(self, config: RunConfig, tokenizer_path: str) -> TextClassData:
        return prepare_text_classes(config.data, tokenizer_path)

    def classes(self, data: TextClassData, teacher_metadata: dict[str, Any]) -> int:
        """The data's classes, which a teacher must predict in the same order."""
        names = data.test.class_names
        recorded = teacher_metadata.get("class_names")
        if teacher_metadata and (int(teacher_metadata["num_classes"]) != len(names)
                                 or (recorded is not None and list(recorded) != names)):
            raise ConfigError(f"the teacher predicts {teacher_metadata['num_classes']} classes "
                              f"({', '.join(map(str, recorded or []))}) but the data has {len(names)} "
                              f"({', '.join(names)}); give data.class_names in the teacher's order")
        return len(names)

    def model_spec(self, spec: dict[str, Any], data: TextClassData) -> dict[str, Any]:
        """The student's spec with what its config must take from the tokenizer where it is silent: the vocabulary
        (the tokenizer's size) and the padding token (a decoder classifies from its last token that is not
        padding). Raises ConfigError for a padding token other than the data's or a vocabulary without a row for
        every token id of the data."""
        return classifier_spec(spec, data)

    def batches(self, dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> TextClassBatches:
        return TextClassBatches(dataset, batch_size, shuffle=shuffle, seed=seed)

    def data_metadata(self, data: TextClassData) -> dict[str, Any]:
        return {"input_shape": list(data.train.input_shape), "class_names": list(data.test.class_names)}

    def describe(self, prepared: Prepared) -> str:
        data = prepared.data
        return (f"{len(data.train)} training texts of up to {data.train.input_shape[0]} tokens, {len(data.test)} test "
                f"texts, {data.test.num_classes} classes")

    def test_evaluation(self, config: RunConfig, prepared: Prepared, model: nn.Module,
                        teacher: nn.Module | None) -> dict[str, Any]:
        """Accuracy, NLL, calibration, per-class results and agreement, as for any classifier (no latency: its
        inputs are token ids), and the teacher's accuracy beside them."""
        batches = self.batches(prepared.data.test, config.train.batch_size)
        evaluation = {"task": self.name, **evaluate(model, batches, teacher=teacher, latency=False)}
        if teacher is not None:
            taught = evaluate(teacher, batches, latency=False)
            evaluation["teacher"] = {key: taught[key] for key in ("accuracy", "nll", "ece", "parameters", "samples")}
        return evaluation
