"""Conversations for chat models: rows of messages rendered with the tokenizer's chat template, one block each, in
which only the assistant's tokens count.

A row holds ``messages`` (a list of ``{"role", "content"}``: system, user, assistant, in any number of turns) or
``prompt`` and ``completion`` (strings, or lists of messages: a string prompt is the user's turn, a string completion
the assistant's). Rows come from a JSON Lines file, a Parquet file or a Hugging Face ``datasets`` folder written by
``save_to_disk``. The conversation is rendered as the model will see it at inference (``apply_chat_template``), and
every assistant turn (its text and the template's end-of-turn token) is found again in the rendering: those tokens,
and only those, are predicted by the loss and every metric.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from distillery.data.text import TokenBlocks
from distillery.data.tokenizer import padding_id
from distillery.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatRow:
    """One conversation and where it came from (e.g. ``chat.jsonl line 7``), for messages that name it."""

    where: str
    messages: list[dict[str, str]]


def read_chat_rows(path: str | Path) -> list[ChatRow]:
    """The conversations of a ``.jsonl`` or ``.parquet`` file, or of a ``datasets`` folder (``save_to_disk``).

    Raises DataError naming the file and the row that is not a conversation: not JSON, neither ``messages`` nor
    ``prompt``/``completion``, a message that is not ``{role, content}``, an unknown role, no assistant turn.
    """
    path = Path(path)
    return [ChatRow(where, conversation(row, where)) for where, row in _raw_rows(path)]


def _raw_rows(path: Path) -> list[tuple[str, Any]]:
    if path.is_dir():
        rows = list(enumerate(_dataset_rows(path), start=1))
        described = [(f"{path} row {number}", row) for number, row in rows]
    elif path.suffix == ".jsonl" and path.is_file():
        described = list(_jsonl_rows(path))
    elif path.suffix == ".parquet" and path.is_file():
        import pyarrow.parquet as parquet

        described = [(f"{path} row {number}", row)
                     for number, row in enumerate(parquet.read_table(path).to_pylist(), start=1)]
    elif not path.exists():
        raise DataError(f"chat data {path} does not exist; give a .jsonl or .parquet file or a datasets folder")
    else:
        raise DataError(f"chat data {path} is not a .jsonl or .parquet file or a datasets folder (save_to_disk)")
    if not described:
        raise DataError(f"{path} holds no conversations")
    return described


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path} line {number}", json.loads(line)
        except ValueError:
            raise DataError(f"{path} line {number} is not JSON; each line holds one conversation") from None


def _dataset_rows(path: Path) -> list[Any]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{path} is not a datasets folder written by save_to_disk ({str(error)[:160]})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{path} holds the splits {', '.join(dataset)}; point data.path at one of them")
        dataset = dataset["train"]
    return dataset.to_list()


def conversation(row: Any, where: str) -> list[dict[str, str]]:
    """A row's messages, checked: each ``{role, content}`` with a known role and text content, one assistant turn
    at least. Raises DataError naming ``where``."""
    if not isinstance(row, dict):
        raise DataError(f"{where} is not an object; a conversation holds messages, or prompt and completion")
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row and "completion" in row:
        messages = _as_messages(row["prompt"], "user", where) + _as_messages(row["completion"], "assistant", where)
    else:
        raise DataError(f"{where} needs \"messages\" (a list of {{role, content}}) or \"prompt\" and \"completion\"")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {number} is not {{role, content}} with text content")
        if message.get("role") not in ROLES:
            raise DataError(f"{where}: message {number} has role {message.get('role')!r}; roles are "
                            f"{', '.join(ROLES)}")
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{where} has no assistant turn, so nothing in it is learned; add one or remove the row")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _as_messages(part: Any, role: str, where: str) -> list[dict[str, str]]:
    if isinstance(part, str):
        return [{"role": role, "content": part}]
    if isinstance(part, list):
        return part
    raise DataError(f"{where}: prompt and completion are strings or lists of messages")


def render_conversation(tokenizer: Any, messages: list[dict[str, str]], template: str | None,
                        where: str) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template renders it, and the character spans of its assistant turns: each from
    where the template's generation prompt ends to the end of that turn (its end-of-turn token included).

    Each span is found by rendering the conversation up to that turn twice, with the generation prompt and with the
    turn; raises DataError naming ``where`` when the turn's text cannot be found again after the prompt (a template
    that rewrites earlier turns, or renders an assistant turn differently from what it prompts for).
    """
    def render(part: list[dict[str, str]], prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt,
                                                 chat_template=template)
        except ValueError as error:  # transformers: no chat template set
            raise DataError(f"the tokenizer has no chat template to render {where} with ({str(error)[:120]}); give "
                            "data.chat_template: a Jinja file") from None

    text = render(messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, turn = render(messages[:index], True), render(messages[: index + 1], False)
        end = len(turn.rstrip())
        if not (turn.startswith(prompt) and text.startswith(turn[:end]) and message["content"].strip()
                in turn[len(prompt): end]):
            raise DataError(f"{where}: the chat template does not render assistant turn {len(spans) + 1} after its "
                            "generation prompt, so its tokens cannot be found again; use a template that does "
                            "(data.chat_template)")
        spans.append((len(prompt), end))
    return text, spans


def end_of_turn(tokenizer: Any, template: str | None = None) -> str:
    """The text the chat template closes an assistant turn with (e.g. ``<|im_end|>``), found by rendering one
    conversation; "" when it closes turns with nothing."""
    marker = "\u2063answer\u2063"  # text no template adds itself
    messages = [{"role": "user", "content": "question"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    return text[text.rfind(marker) + len(marker):].strip() if marker in text else ""


def chat_prompt(tokenizer: Any, question: str, template: str | None = None) -> str:
    """``question`` as the user's turn, rendered with the generation prompt: the text a chat model answers."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True, chat_template=template)


def assistant_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token (its character ``offsets``), whether it starts inside an assistant span."""
    return [any(start <= token_start < end for start, end in spans) for token_start, _ in offsets]


def chat_blocks(rows: list[ChatRow], tokenizer: Any, block_length: int, template: str | None = None,
                source: str = "", pack: bool = False) -> TokenBlocks:
    """The conversations rendered and tokenised whole, in blocks of ``block_length + 1`` tokens; only predictions of
    assistant tokens count (position p predicts token p + 1). One conversation a block, cut at its end and padded;
    or, with ``pack``, as many whole conversations a block as fit, in order, with positions that restart at each (so
    attention never crosses from one into the next; ``blocks.positions``). ``blocks.cut`` counts the conversations
    longer than a block. Raises DataError when no assistant token is left in any block."""
    encoded = [_encoded(tokenizer, row, template) for row in rows]
    cut = sum(len(ids) > block_length + 1 for ids, _ in encoded)
    groups = _packed(encoded, block_length + 1) if pack else [[item] for item in encoded]
    pad = padding_id(tokenizer)
    tokens = torch.full((len(groups), block_length + 1), pad, dtype=torch.int64)
    counted = torch.zeros(len(groups), block_length, dtype=torch.bool)
    attention = torch.zeros(len(groups), block_length, dtype=torch.bool)
    positions = torch.zeros(len(groups), block_length, dtype=torch.int64)
    for index, group in enumerate(groups):
        ids = [token for part, _ in group for token in part][: block_length + 1]
        learned = [flag for _, part in group for flag in part][: block_length + 1]
        starts = [position for part, _ in group for position in range(len(part))][: block_length]
        tokens[index, : len(ids)] = torch.as_tensor(ids)
        counted[index, : len(ids) - 1] = torch.as_tensor(learned[1:])
        attention[index, : len(ids) - 1] = True
        positions[index, : len(starts)] = torch.as_tensor(starts)
        # Padding after the last conversation is a segment of its own, which no counted position attends to.
        positions[index, len(starts):] = torch.arange(block_length - len(starts))
    if not counted.any():
        raise DataError(f"{source}: every conversation's assistant turns lie beyond {block_length + 1} tokens; raise "
                        "data.block_length")
    if pack:
        return TokenBlocks(tokens, counted, None, source, cut, positions)
    return TokenBlocks(tokens, counted, attention, source, cut)


def _encoded(tokenizer: Any, row: ChatRow, template: str | None) -> tuple[list[int], list[bool]]:
    """A conversation's token ids and, per token, whether it is the assistant's."""
    text, spans = render_conversation(tokenizer, row.messages, template, row.where)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    learned = assistant_mask(encoded["offset_mapping"], spans)
    if not any(learned):
        raise DataError(f"{row.where}: no token of its assistant turns survives tokenisation; check the chat template")
    return encoded["input_ids"], learned


def _packed(encoded: list[tuple[list[int], list[bool]]], size: int) -> list[list[tuple[list[int], list[bool]]]]:
    """Conversations in order, grouped so each group's tokens fit ``size``; a longer one is a group of its own."""
    groups: list[list[tuple[list[int], list[bool]]]] = []
    used = size
    for item in encoded:
        if used + len(item[0]) > size:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += len(item[0])
    return groups
