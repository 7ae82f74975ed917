"""Build steps for language-model runs: the token data (train, validation, test blocks) and the teacher with the
tokenizer it reads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distillery.app.config import DataConfig, RunConfig
from distillery.app.config.sections import TeacherSpec
from distillery.app.steps.prepared_data import split_off_validation
from distillery.data.text import TokenBlocks, load_text_blocks
from distillery.data.tokenizer import first_encoding_difference, load_tokenizer, same_tokenizer
from distillery.errors import ConfigError, DataError
from distillery.messages import note
from distillery.models.checkpoint import load_model
from distillery.models.checkpoint_files import resolve_checkpoint
from distillery.models.text_transformers import load_transformer

DEFAULT_BLOCK_LENGTH = 128
# The options of image and table sources, which text data has no use for.
_NOT_FOR_TEXT = ("classes", "class_names", "image_size", "channels", "label_column", "image_column",
                 "feature_columns", "layout", "factory", "factory_options")


@dataclass
class TokenData:
    train: TokenBlocks
    val: TokenBlocks | None
    test: TokenBlocks
    tokenizer: Any
    tokenizer_path: str
    cut: int = 0  # rows longer than a block, cut at its end (conversations, prompt/completion pairs)


def prepare_token_data(data: DataConfig, tokenizer_path: str,
                       read_blocks: Callable[[str, Any, int], TokenBlocks] = load_text_blocks) -> TokenData:
    """The text of ``data.path`` in blocks (``read_blocks(path, tokenizer, block_length)``: plain text and
    prompt/completion pairs by default): the test split from ``data.test_path`` or the last ``test_fraction`` (0.1) of
    the blocks (held-out text, not shuffled away from its neighbours), a seeded ``val_fraction`` of the rest for
    validation. Raises ConfigError for options text has no use for, DataError for text too short to split."""
    unused = [name for name in _NOT_FOR_TEXT if getattr(data, name) is not None]
    if unused or data.augment.enabled:
        raise ConfigError(f"data.{(unused or ['augment'])[0]} is for images and tables, not text; remove it")
    if data.path is None:
        raise ConfigError("text data needs data.path: a text file, a folder of .txt files or a .jsonl file of "
                          "prompt/completion pairs")
    tokenizer = load_tokenizer(tokenizer_path)
    length = data.block_length or DEFAULT_BLOCK_LENGTH
    blocks = read_blocks(data.path, tokenizer, length)
    if data.test_path is not None:
        train, test = blocks, read_blocks(data.test_path, tokenizer, length)
        cut = blocks.cut + test.cut
    else:
        held_out = max(1, round(len(blocks) * (data.test_fraction or 0.1)))
        if held_out >= len(blocks):
            raise DataError(f"{data.path} makes {len(blocks)} blocks of {length} tokens, too few to hold some out for "
                            "testing; give more text, a shorter data.block_length or data.test_path")
        train, test = blocks.subset(torch.arange(len(blocks) - held_out)), \
            blocks.subset(torch.arange(len(blocks) - held_out, len(blocks)))
        cut = blocks.cut
    train = _first(train, data.train_limit)
    test = _first(test, data.test_limit)
    train, val = split_off_validation(train, data.val_fraction)
    return TokenData(train, val, test, tokenizer, tokenizer_path, cut)


def _first(blocks: TokenBlocks, limit: int | None) -> TokenBlocks:
    return blocks if limit is None or limit >= len(blocks) else blocks.subset(torch.arange(limit))


def teacher_entry(config: RunConfig) -> str | TeacherSpec | None:
    """The run's one teacher: our run directory, ``{huggingface: FOLDER}`` or ``{gguf: FILE}``, or None where
    ``distill.teacher_logprobs`` stands in for it. Raises ConfigError for none otherwise, an ensemble, or a spec of
    another kind."""
    teacher = config.distill.teacher
    if isinstance(teacher, list):
        raise ConfigError("a language-model run distils from one teacher; give distill.teacher one entry")
    if teacher is None and config.distill.teacher_logprobs is not None:
        return None
    if teacher is None:
        raise ConfigError(f"method {config.distill.method!r} needs a teacher; set distill.teacher")
    if isinstance(teacher, TeacherSpec) and teacher.huggingface is None and teacher.gguf is None:
        raise ConfigError("a language-model teacher is a run directory, {huggingface: FOLDER} or {gguf: FILE}; "
                          f"{teacher.name} is another kind")
    return teacher


def teacher_tokenizer_path(teacher: str | TeacherSpec) -> str:
    """Where the teacher's tokenizer is: in its folder or .gguf file, or a run directory's ``tokenizer/``."""
    if isinstance(teacher, TeacherSpec):
        return teacher.huggingface or teacher.gguf
    return str(resolve_checkpoint(teacher).parent / "tokenizer")


def load_language_teacher(teacher: str | TeacherSpec, allow_factories: set[str], kind: str = "causal_lm"
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher :func:`teacher_entry` gives (a ``kind`` model: causal_lm or sequence_classifier), loaded in eval
    mode, and its metadata."""
    if isinstance(teacher, TeacherSpec):
        return load_transformer(teacher.huggingface or teacher.gguf, kind)
    model, metadata = load_model(teacher, allow_factories=allow_factories)
    return model.eval(), metadata


def check_tokenizers(data: Any, teacher_tokenizer_path: str | None, sample: int = 512) -> None:
    """Refuse, in one line naming both and the first text they encode differently, a data tokenizer that is not the
    teacher's: the same text would be different token ids to the two models, and their next-token distributions
    would not be comparable. Tokenizers whose files differ (another size, an unused special token) but that encode
    the data's text alike (its first ``sample`` training and test rows, decoded) are accepted, with a note."""
    if teacher_tokenizer_path is None or Path(teacher_tokenizer_path) == Path(data.tokenizer_path):
        return
    teacher_tokenizer = load_tokenizer(teacher_tokenizer_path)
    if same_tokenizer(teacher_tokenizer, data.tokenizer):
        return
    texts = _decoded_rows(data, sample)
    named = (f"the teacher's tokenizer ({teacher_tokenizer_path}, {len(teacher_tokenizer)} tokens) and the data's "
             f"({data.tokenizer_path}, {len(data.tokenizer)} tokens)")
    difference = first_encoding_difference(teacher_tokenizer, data.tokenizer, texts)
    if difference is not None:
        raise ConfigError(f"{named} encode {difference.text!r} differently ({difference.first_ids} against "
                          f"{difference.second_ids}); token-level distillation needs one tokenizer: leave "
                          "data.tokenizer out to use the teacher's")
    note(f"{named} differ in their files but encode the {len(texts)} texts checked (the data's first rows) alike: "
         "distilled as one tokenizer")


def _decoded_rows(data: Any, sample: int) -> list[str]:
    """The text of the first ``sample`` training and test rows (token blocks or tokenised texts), padding left out."""
    texts = []
    for part in (data.train, data.test):
        ids = part.tokens if isinstance(part, TokenBlocks) else part.input_ids
        for index in range(min(sample, len(ids))):
            row = ids[index]
            if part.attention is not None:  # [N, L] beside a block's L + 1 tokens: the last one is only a label
                row = row[:part.attention.shape[1]][part.attention[index]]
            texts.append(data.tokenizer.decode(row.tolist()))
    return texts


def check_vocabulary(data: TokenData, vocabulary: int, who: str) -> None:
    """Refuse token ids the model has no row for."""
    largest = int(max(data.train.tokens.max(), data.test.tokens.max()))
    if largest >= vocabulary:
        raise ConfigError(f"the tokenizer {data.tokenizer_path} makes token id {largest} but {who} has a vocabulary "
                          f"of {vocabulary}; use the tokenizer the model was trained with")
