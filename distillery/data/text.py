"""Text for language models: plain text and JSON Lines of prompt/completion pairs, as fixed-length blocks of tokens.

Plain text (a file, or a folder of ``.txt`` files, one document each) is tokenised, each document closed by the
end-of-text token, and packed: the token stream is cut into blocks of ``block_length + 1`` tokens that overlap by one,
so every token after the first is predicted exactly once. JSON Lines hold one ``{"prompt": ..., "completion": ...}``
per line; each pair is one block (truncated or padded), and only the completion's tokens count: the loss is the
student's on the answer, never on the question it was given. Blocks are tokenised once and cached by fingerprint (the
file's bytes, the tokenizer, the block length).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillery.atomic import atomic_write
from distillery.cache_dir import default_cache_dir
from distillery.data.tokenizer import padding_id, tokenizer_fingerprint
from distillery.errors import DataError

_FORMAT = 1  # bump when the blocks a file makes change, so older caches are not read


@dataclass(eq=False)
class TokenBlocks:
    """Blocks of token ids and which predictions count.

    ``tokens`` int64 ``[N, L + 1]``: position p of a block predicts its token p + 1. ``counted`` bool ``[N, L]``: the
    predictions that count (not padding; with prompts, the completion's only). ``attention`` bool ``[N, L]``, the
    positions that are not padding, or None when none are. ``cut``: how many rows (conversations, prompt/completion
    pairs) were longer than a block and cut at its end. ``positions`` int64 ``[N, L]``: with several conversations
    packed into a block, each input token's position within its own conversation (restarting at 0, so attention never
    crosses from one into the next), else None. Example: ``blocks.subset(torch.arange(10))``.
    """

    tokens: torch.Tensor
    counted: torch.Tensor
    attention: torch.Tensor | None
    source: str = ""
    cut: int = 0
    positions: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def block_length(self) -> int:
        """The positions a block predicts, L."""
        return self.tokens.shape[1] - 1

    @property
    def counted_tokens(self) -> int:
        """The predictions that count, over all blocks."""
        return int(self.counted.sum())

    def subset(self, indices: torch.Tensor) -> "TokenBlocks":
        """The blocks at ``indices``, in that order."""
        attention = self.attention[indices] if self.attention is not None else None
        positions = self.positions[indices] if self.positions is not None else None
        return TokenBlocks(self.tokens[indices], self.counted[indices], attention, self.source, positions=positions)


def read_documents(path: str | Path) -> list[tuple[str, str]]:
    """``(name, text)`` of a text file, or of every ``.txt`` file under a folder (sorted by path). Raises DataError for
    a missing path, a folder without text files, or a file that is not UTF-8."""
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.is_file() else None
    if files is None:
        raise DataError(f"text path {path} does not exist; give a text file or a folder of .txt files")
    if not files:
        raise DataError(f"{path} holds no .txt files; give a text file or a folder of .txt files")
    documents = []
    for file in files:
        try:
            documents.append((str(file), file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as error:
            raise DataError(f"{file} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    if not any(text.strip() for _, text in documents):
        raise DataError(f"{path} holds no text")
    return documents


def read_jsonl(path: str | Path, valid, expected: str) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, one a line (blank lines skipped), each passing ``valid(row)``. Raises
    DataError naming the file and the line that is not JSON or not ``expected`` (e.g. "text prompt and completion
    fields"), or a file without rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"JSON Lines file {path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{path} line {number} is not JSON; each line holds one object with {expected}") from None
        if not isinstance(row, dict) or not valid(row):
            raise DataError(f"{path} line {number} needs {expected}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def read_prompt_completions(path: str | Path) -> list[tuple[str, str]]:
    """``(prompt, completion)`` of every line of a JSON Lines file. Raises DataError naming the line of a bad row."""
    rows = read_jsonl(path, lambda row: isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str),
                      'text "prompt" and "completion" fields')
    return [(row["prompt"], row["completion"]) for row in rows]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def pack_documents(documents: list[str], tokenizer: Any, block_length: int, source: str) -> TokenBlocks:
    """Documents tokenised line by line (a long text in one call is slow and gains nothing), each closed by the
    end-of-text token, packed into ``[N, block_length + 1]`` blocks overlapping by one token. Raises DataError when
    the text makes no whole block."""
    stream: list[int] = []
    end = tokenizer.eos_token_id
    for text in documents:
        for ids in _encode(tokenizer, text.splitlines(keepends=True)):
            stream.extend(ids)
        if end is not None:
            stream.append(end)
    count = (len(stream) - 1) // block_length
    if count < 1:
        raise DataError(f"{source} makes {len(stream)} tokens, fewer than one block of {block_length + 1}; lower "
                        "data.block_length or give more text")
    tokens = torch.as_tensor(np.asarray(stream[: count * block_length + 1], dtype=np.int64))
    starts = torch.arange(count)[:, None] * block_length + torch.arange(block_length + 1)
    return TokenBlocks(tokens[starts], torch.ones(count, block_length, dtype=torch.bool), None, source)


def prompt_completion_blocks(pairs: list[tuple[str, str]], tokenizer: Any, block_length: int,
                             source: str) -> TokenBlocks:
    """One block per pair: prompt, completion and the end-of-text token, cut to ``block_length + 1`` and padded;
    only predictions of completion tokens count. Raises DataError when a prompt leaves no completion token."""
    end, pad = tokenizer.eos_token_id, padding_id(tokenizer)
    prompts, completions = _encode(tokenizer, [p for p, _ in pairs]), _encode(tokenizer, [c for _, c in pairs])
    tokens = torch.full((len(pairs), block_length + 1), pad, dtype=torch.int64)
    counted = torch.zeros(len(pairs), block_length, dtype=torch.bool)
    attention = torch.zeros(len(pairs), block_length, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids = (prompt + completion + ([end] if end is not None else []))[: block_length + 1]
        if len(prompt) >= len(ids):
            raise DataError(f"{source} row {row + 1}: its prompt has {len(prompt)} tokens and fills the block of "
                            f"{block_length + 1}; raise data.block_length or shorten the prompt")
        tokens[row, : len(ids)] = torch.as_tensor(ids)
        counted[row, len(prompt) - 1: len(ids) - 1] = True  # position p predicts token p + 1
        attention[row, : len(ids) - 1] = True
    return TokenBlocks(tokens, counted, attention, source)


def load_text_blocks(path: str | Path, tokenizer: Any, block_length: int, *, cache: bool = True) -> TokenBlocks:
    """The blocks of a text file or folder (packed) or a ``.jsonl`` file (prompt/completion), from the cache when
    the same bytes were tokenised before with the same tokenizer and block length.

    Example: ``train = load_text_blocks("kjv/train.txt", load_tokenizer("tokenizer"), 128)``
    """
    path = Path(path)
    is_jsonl = path.suffix == ".jsonl"
    cache_file = _cache_file(path, tokenizer, block_length) if cache else None
    if cache_file is not None and cache_file.is_file():
        return _read_cache(cache_file, str(path))
    if is_jsonl:
        blocks = prompt_completion_blocks(read_prompt_completions(path), tokenizer, block_length, str(path))
    else:
        blocks = pack_documents([text for _, text in read_documents(path)], tokenizer, block_length, str(path))
    if cache_file is not None:
        _write_cache(cache_file, blocks)
    return blocks


def _cache_file(path: Path, tokenizer: Any, block_length: int) -> Path:
    digest = hashlib.sha256(f"{_FORMAT}|{tokenizer_fingerprint(tokenizer)}|{block_length}|{path.suffix}".encode())
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path] if path.is_file() else []
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return default_cache_dir() / "tokens" / f"{digest.hexdigest()[:24]}.npz"


def _write_cache(file: Path, blocks: TokenBlocks) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"tokens": blocks.tokens.numpy().astype(np.int32), "counted": blocks.counted.numpy()}
    if blocks.attention is not None:
        arrays["attention"] = blocks.attention.numpy()

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a file object: np.savez would append .npz to the name
            np.savez(handle, **arrays)
    atomic_write(file, write)


def _read_cache(file: Path, source: str) -> TokenBlocks:
    with np.load(file, allow_pickle=False) as arrays:
        attention = torch.from_numpy(arrays["attention"]) if "attention" in arrays else None
        return TokenBlocks(torch.from_numpy(arrays["tokens"].astype(np.int64)), torch.from_numpy(arrays["counted"]),
                           attention, source)
