"""Labelled texts for transformer classifiers: JSON Lines or CSV rows of a text and its class, tokenised once (cut or
padded to a fixed length) and batched as ``{"input_ids", "attention_mask"}`` with one label per text."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distillery.data.batch import Batch
from distillery.data.indexed_batches import IndexedBatches
from distillery.data.text import read_jsonl
from distillery.data.tokenizer import padding_id
from distillery.errors import DataError


@dataclass(eq=False)
class TextClassSet:
    """Tokenised texts: ``input_ids`` int64 ``[N, L]``, ``attention`` bool ``[N, L]`` (False: padding), ``labels``
    int64 ``[N]``, and the classes' names. Example: ``TextClassSet.encode(texts, labels, names, tokenizer, 64)``."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.input_ids.shape[1],)

    def subset(self, indices: torch.Tensor) -> "TextClassSet":
        return TextClassSet(self.input_ids[indices], self.attention[indices], self.labels[indices],
                            list(self.class_names), self.source)

    @classmethod
    def encode(cls, texts: list[str], labels: list[int], class_names: list[str], tokenizer: Any, length: int,
               source: str) -> "TextClassSet":
        """Tokenise ``texts``, cutting each to ``length`` tokens and padding the rest (the tokenizer's padding token,
        else its end-of-text token)."""
        pad = padding_id(tokenizer)
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=length)["input_ids"]
        input_ids = torch.full((len(texts), length), pad, dtype=torch.int64)
        attention = torch.zeros(len(texts), length, dtype=torch.bool)
        for row, ids in enumerate(encoded):
            if not ids:
                raise DataError(f"{source} row {row + 1} has no tokens; remove empty texts")
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            attention[row, : len(ids)] = True
        return cls(input_ids, attention, torch.as_tensor(labels, dtype=torch.int64), class_names, source)


def read_labelled_texts(path: str | Path, text_column: str = "text", label_column: str = "label"
                        ) -> tuple[list[str], list[str]]:
    """The texts and class names of a ``.jsonl`` file (one object a line) or a ``.csv`` file (read with pyarrow).
    Raises DataError naming the file and the row or column that is missing or not text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled text file {path} does not exist")
    if path.suffix == ".csv":
        from pyarrow import csv

        table = csv.read_csv(path)
        for column in (text_column, label_column):
            if column not in table.column_names:
                raise DataError(f"{path} has no column {column!r}; its columns: {', '.join(table.column_names)}")
        return [str(v) for v in table[text_column].to_pylist()], [str(v) for v in table[label_column].to_pylist()]
    rows = read_jsonl(path, lambda row: isinstance(row.get(text_column), str) and row.get(label_column) is not None,
                      f"a text {text_column!r} and a {label_column!r}")
    return [row[text_column] for row in rows], [str(row[label_column]) for row in rows]


class TextClassBatches(IndexedBatches):
    """Batches of a :class:`TextClassSet`: inputs ``{"input_ids": [B, L], "attention_mask": [B, L]}``, labels ``[B]``,
    indices; the order depends only on (seed, epoch). Example: ``TextClassBatches(train, 32, shuffle=True)``."""

    def __init__(self, dataset: TextClassSet, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__(len(dataset), batch_size, shuffle, seed)
        self.dataset = dataset

    def batch(self, indices: torch.Tensor) -> Batch:
        inputs = {"input_ids": self.dataset.input_ids[indices],
                  "attention_mask": self.dataset.attention[indices].long()}
        return Batch(inputs, self.dataset.labels[indices], indices=indices)
