"""What differs between the two kinds of text run that share the language pipeline: next-token prediction
(``data.dataset: text``, a causal LM, perplexity) and text classification (``text_classification``, a sequence
classifier, accuracy and calibration like any classifier)."""
from __future__ import annotations

from typing import Any

from torch import nn

from distillery.app.config import DataConfig, RunConfig
from distillery.app.config_sections import TEXT_DATASETS
from distillery.app.evaluation import evaluate
from distillery.app.language_data import TokenData, check_vocabulary, prepare_token_data
from distillery.app.text_classes import TextClassData, classifier_spec, prepare_text_classes
from distillery.data.text_classes import TextClassBatches
from distillery.data.token_batches import TokenBatches
from distillery.engine import resolve_device
from distillery.errors import ConfigError
from distillery.eval.perplexity import language_model_metrics
from distillery.models import count_parameters


class LanguageModelTask:
    kind = "causal_lm"
    name = "language_model"

    @staticmethod
    def prepare(data: DataConfig, tokenizer_path: str) -> TokenData:
        return prepare_token_data(data, tokenizer_path)

    @staticmethod
    def classes(data: TokenData, teacher_metadata: dict[str, Any]) -> int:
        """The vocabulary: the teacher's (its output rows), or the tokenizer's without one."""
        vocabulary = int(teacher_metadata["num_classes"]) if teacher_metadata else len(data.tokenizer)
        check_vocabulary(data, vocabulary, "the teacher" if teacher_metadata else "the model")
        return vocabulary

    @staticmethod
    def model_spec(spec: dict[str, Any], data: TokenData) -> dict[str, Any]:
        """The student's spec as given: its vocabulary follows the teacher or the tokenizer (see ``classes``)."""
        return spec

    @staticmethod
    def batches(dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> TokenBatches:
        return TokenBatches(dataset, batch_size, shuffle=shuffle, seed=seed)

    @staticmethod
    def metadata(data: TokenData) -> dict[str, Any]:
        return {"input_shape": [data.train.block_length]}

    @staticmethod
    def describe(data: TokenData) -> str:
        return (f"{len(data.train)} training blocks of {data.train.block_length} tokens "
                f"({data.train.counted_tokens:,} counted), {len(data.test)} test blocks")

    @classmethod
    def test_evaluation(cls, model: nn.Module, data: TokenData, teacher: nn.Module | None,
                        config: RunConfig) -> dict[str, Any]:
        """Perplexity, cross-entropy and next-token accuracy on the test blocks, the teacher's beside them and the
        student's agreement with it."""
        device = resolve_device(config.device)
        batches = cls.batches(data.test, config.train.batch_size)
        teacher = teacher.to(device) if teacher is not None else None
        evaluation = {"task": cls.name, **language_model_metrics(model.to(device), batches, teacher=teacher,
                                                                 device=device),
                      "parameters": count_parameters(model)}
        if teacher is not None:
            evaluation["teacher"]["parameters"] = count_parameters(teacher)
        return evaluation


class TextClassificationTask:
    kind = "sequence_classifier"
    name = "text_classification"

    @staticmethod
    def prepare(data: DataConfig, tokenizer_path: str) -> TextClassData:
        return prepare_text_classes(data, tokenizer_path)

    @staticmethod
    def classes(data: TextClassData, teacher_metadata: dict[str, Any]) -> int:
        """The data's classes, which a teacher must predict in the same order."""
        names = data.test.class_names
        recorded = teacher_metadata.get("class_names")
        if teacher_metadata and (int(teacher_metadata["num_classes"]) != len(names)
                                 or (recorded is not None and list(recorded) != names)):
            raise ConfigError(f"the teacher predicts {teacher_metadata['num_classes']} classes "
                              f"({', '.join(map(str, recorded or []))}) but the data has {len(names)} "
                              f"({', '.join(names)}); give data.class_names in the teacher's order")
        return len(names)

    @staticmethod
    def model_spec(spec: dict[str, Any], data: TextClassData) -> dict[str, Any]:
        """The student's spec with what its config must take from the tokenizer where it is silent: the vocabulary
        (the tokenizer's size) and the padding token (a decoder classifies from its last token that is not
        padding). Raises ConfigError for a padding token other than the data's or a vocabulary without a row for
        every token id of the data."""
        return classifier_spec(spec, data)

    @staticmethod
    def batches(dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> TextClassBatches:
        return TextClassBatches(dataset, batch_size, shuffle=shuffle, seed=seed)

    @staticmethod
    def metadata(data: TextClassData) -> dict[str, Any]:
        return {"input_shape": list(data.train.input_shape), "class_names": list(data.test.class_names)}

    @staticmethod
    def describe(data: TextClassData) -> str:
        return (f"{len(data.train)} training texts of up to {data.train.input_shape[0]} tokens, {len(data.test)} test "
                f"texts, {data.test.num_classes} classes")

    @classmethod
    def test_evaluation(cls, model: nn.Module, data: TextClassData, teacher: nn.Module | None,
                        config: RunConfig) -> dict[str, Any]:
        """Accuracy, NLL, calibration, per-class results and agreement, as for any classifier (no latency: its
        inputs are token ids), and the teacher's accuracy beside them."""
        batches = cls.batches(data.test, config.train.batch_size)
        evaluation = {"task": cls.name, **evaluate(model, batches, teacher=teacher, latency=False)}
        if teacher is not None:
            taught = evaluate(teacher, batches, latency=False)
            evaluation["teacher"] = {key: taught[key] for key in ("accuracy", "nll", "ece", "parameters", "samples")}
        return evaluation


TASKS = {"text": LanguageModelTask, "text_classification": TextClassificationTask}


def is_text_run(config: RunConfig) -> bool:
    """Whether the run's data is text: a language model or a text classifier, trained by the language pipeline."""
    return config.data.dataset in TEXT_DATASETS
