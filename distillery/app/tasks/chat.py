"""The chat task: conversations rendered with the tokenizer's chat template, a causal LM that learns the assistant's
turns alone (every loss and metric counts assistant tokens only), its best epoch the lowest validation perplexity."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.tasks.cached_teacher import AbsentTeacher
from distillery.app.tasks.next_token import LanguageModelTask
from distillery.app.tasks.task import Prepared
from distillery.app.tasks.token_data import TokenData, prepare_token_data
from distillery.data.conversations import chat_blocks, read_chat_rows
from distillery.data.text import TokenBlocks
from distillery.errors import ConfigError
from distillery.models.text_transformers import check_packed_attention


class ChatTask(LanguageModelTask):
    """``data.dataset: chat``: rows of messages (or prompt and completion) from JSON Lines, Parquet or a datasets
    folder; ``data.chat_template`` may name a Jinja file to render them with instead of the tokenizer's own."""

    name = "chat"
    renders_chat = True

    def load_data(self, config: RunConfig, tokenizer_path: str) -> TokenData:
        template = _read_template(config.data.chat_template)

        def read(path: str, tokenizer: Any, block_length: int) -> TokenBlocks:
            if template is not None:
                tokenizer.chat_template = template  # saved with the run's tokenizer: generate and export use it
            return chat_blocks(read_chat_rows(path), tokenizer, block_length, template, str(path),
                               pack=config.data.pack)

        return prepare_token_data(config.data, tokenizer_path, read)

    def prepare(self, config: RunConfig) -> Prepared:
        prepared = super().prepare(config)
        if config.data.pack and prepared.teacher is not None and not isinstance(prepared.teacher, AbsentTeacher):
            check_packed_attention(prepared.teacher, "the teacher")
        return prepared

    def student(self, config: RunConfig, prepared: Prepared) -> nn.Module:
        model = super().student(config, prepared)
        if config.data.pack:
            check_packed_attention(model, "the student")
        return model

    def describe(self, prepared: Prepared) -> str:
        data = prepared.data
        cut = (f"; {data.cut} longer than {data.train.block_length + 1} tokens were cut at the end (raise "
               "data.block_length to keep them whole)") if data.cut else ""
        unit = "blocks of packed conversations" if data.train.positions is not None else "conversations"
        return (f"{len(data.train)} training {unit} ({data.train.counted_tokens:,} assistant tokens counted), "
                f"{len(data.test)} test {unit}{cut}")


def _read_template(path: str | None) -> str | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"data.chat_template {path} does not exist; give a Jinja file, or leave it out to use the "
                          "tokenizer's own template")
    return file.read_text(encoding="utf-8")
