"""Build step 1 for text classification runs: labelled texts tokenised into train, validation and test sets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distillery.app.config import DataConfig
from distillery.app.steps.prepared_data import SPLIT_SEED, split_off_validation
from distillery.data.text_classes import TextClassSet, read_labelled_texts
from distillery.data.tokenizer import load_tokenizer, padding_id
from distillery.errors import ConfigError, DataError
from distillery.models.text_transformers import config_of

DEFAULT_TEXT_LENGTH = 64
_NOT_FOR_TEXT = ("classes", "image_size", "channels", "image_column", "feature_columns", "layout", "factory",
                 "factory_options")


@dataclass
class TextClassData:
    train: TextClassSet
    val: TextClassSet | None
    test: TextClassSet
    tokenizer: Any
    tokenizer_path: str


def prepare_text_classes(data: DataConfig, tokenizer_path: str) -> TextClassData:
    """The labelled texts of ``data.path`` (JSON Lines or CSV), tokenised to ``block_length`` tokens (64); the test
    set from ``data.test_path`` or a seeded ``test_fraction`` (0.2), a seeded ``val_fraction`` of the rest for
    validation; classes from ``data.class_names`` or the training labels, sorted. Raises ConfigError for image
    options, DataError for a test label the training set does not have."""
    unused = [name for name in _NOT_FOR_TEXT if getattr(data, name) is not None]
    if unused or data.augment.enabled:
        raise ConfigError(f"data.{(unused or ['augment'])[0]} is for images and tables, not text; remove it")
    if data.path is None:
        raise ConfigError("text_classification needs data.path: a .jsonl or .csv file of texts and labels")
    columns = {"text_column": data.text_column or "text", "label_column": data.label_column or "label"}
    texts, labels = read_labelled_texts(data.path, **columns)
    if data.test_path is not None:
        test_texts, test_labels = read_labelled_texts(data.test_path, **columns)
    else:
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        held = set(order[: max(1, round(len(texts) * (data.test_fraction or 0.2)))])
        test_texts, test_labels = [texts[i] for i in sorted(held)], [labels[i] for i in sorted(held)]
        texts, labels = [texts[i] for i in range(len(texts)) if i not in held], \
            [labels[i] for i in range(len(labels)) if i not in held]
    names = list(data.class_names) if data.class_names else sorted(set(labels))
    index = {name: position for position, name in enumerate(names)}
    for split, values in (("training", labels), ("test", test_labels)):
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise DataError(f"the {split} texts have class {unknown[0]!r}, which is not among the classes "
                            f"({', '.join(names)}); add it to data.class_names or fix the labels")
    tokenizer = load_tokenizer(tokenizer_path)
    length = data.block_length or DEFAULT_TEXT_LENGTH
    train = TextClassSet.encode(texts, [index[v] for v in labels], names, tokenizer, length, str(data.path))
    test = TextClassSet.encode(test_texts, [index[v] for v in test_labels], names, tokenizer, length,
                               str(data.test_path or data.path))
    train, test = _first(train, data.train_limit), _first(test, data.test_limit)
    train, val = split_off_validation(train, data.val_fraction)
    return TextClassData(train, val, test, tokenizer, tokenizer_path)


def _first(dataset: TextClassSet, limit: int | None) -> TextClassSet:
    """A seeded ``limit`` of the texts, in their order (files are often sorted by class: the first N would not do)."""
    if limit is None or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return dataset.subset(order[:limit].sort().values)


def classifier_spec(spec: dict[str, Any], data: TextClassData) -> dict[str, Any]:
    """A built-in ``sequence_classifier`` spec with the data's padding token and, when it is built from a config, the
    tokenizer's vocabulary where it names none; a user's factory as given. Raises ConfigError for another padding
    token or a vocabulary without a row for every token id of the data."""
    if spec.get("name") != "sequence_classifier":
        return spec
    named = {**(spec.get("config") or {}), **spec}
    if spec.get("base") is not None and named.get("vocab_size") is None:
        named["vocab_size"] = config_of(spec["base"]).get("vocab_size")
    padding, extra = padding_id(data.tokenizer), {}
    if named.get("pad_token_id") is None:
        extra["pad_token_id"] = padding
    elif int(named["pad_token_id"]) != padding:
        raise ConfigError(f"model pad_token_id {named['pad_token_id']} is not the padding token of the tokenizer "
                          f"{data.tokenizer_path} ({padding}); remove pad_token_id from model: (it follows the "
                          "tokenizer)")
    if named.get("vocab_size") is None:
        extra["vocab_size"] = named["vocab_size"] = len(data.tokenizer)
    largest = int(max(data.train.input_ids.max(), data.test.input_ids.max()))
    if largest >= int(named["vocab_size"]):
        raise ConfigError(f"the tokenizer {data.tokenizer_path} makes token id {largest} but the model's vocab_size is "
                          f"{named['vocab_size']}; raise model vocab_size or use the model's own tokenizer")
    return {**spec, **extra}
