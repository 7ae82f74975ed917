"""Tokenizers for language-model data, read offline from a folder, a ``tokenizer.json`` or a GGUF file.

Nothing is fetched at run time (the libraries' offline switches are set and ``local_files_only`` is passed). A
tokenizer's fingerprint (its full ``tokenizer.json`` text and its special tokens) keys the token caches, so a cache
made with one tokenizer is never read with another.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable

from distillery.errors import DataError


def offline() -> None:
    """Set the Hugging Face libraries' offline switches (a missing file is an error, never a download) and silence
    their progress bars for loading weights, which would bury a one-line message."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer at ``path``: a folder written by ``save_pretrained`` (its ``tokenizer.json``), a
    ``tokenizer.json`` file, or a ``.gguf`` model file (the tokenizer stored in it). Raises DataError naming the
    path when there is none.

    Example: ``tokenizer = load_tokenizer("teachers/smollm2")``
    """
    offline()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    try:
        if path.suffix == ".gguf" and path.is_file():
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        if path.is_file() and path.name.endswith(".json"):
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        if path.is_dir():
            if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
                raise DataError(f"{path} holds no tokenizer (tokenizer.json); give data.tokenizer, or save the "
                                "tokenizer into that folder with save_pretrained")
            return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except ImportError as error:  # a .gguf file needs the gguf package
        raise DataError(f"reading the tokenizer of {path} needs {error.name or 'a package'}: run `make lm-data`, or "
                        "pip install 'distillery[lm]'") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise DataError(f"cannot read a tokenizer from {path} ({lines[0][:200] if lines else type(error).__name__})"
                        ) from None
    raise DataError(f"tokenizer {path} does not exist; give a folder with tokenizer.json, a tokenizer.json file or "
                    "a .gguf model file")


def padding_id(tokenizer: Any) -> int:
    """The token that pads short texts: the tokenizer's padding token, else its end-of-text token, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything that decides the tokens: the whole ``tokenizer.json`` and the special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; save it with a "
                        "tokenizer.json")
    digest = hashlib.sha256(backend.to_str().encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return digest.hexdigest()[:16]


def same_tokenizer(first: Any, second: Any) -> bool:
    """Whether two tokenizers map every text to the same ids: the same vocabulary and the same special tokens."""
    return len(first) == len(second) and first.get_vocab() == second.get_vocab() and \
        first.special_tokens_map == second.special_tokens_map


@dataclass(frozen=True)
class EncodingDifference:
    """Where two tokenizers first part ways on a text: the text of the first differing token of the first one and
    its neighbours, and the ids each tokenizer gives there (from the token before the first difference on)."""

    text: str
    first_ids: list[int]
    second_ids: list[int]


def first_encoding_difference(first: Any, second: Any, texts: Iterable[str]) -> EncodingDifference | None:
    """The first place where ``first`` and ``second`` encode one of ``texts`` to different ids, or None when they
    encode every text alike (two tokenizers whose files differ, in an unused special token or a setting, may still
    cut all of a data set's text the same)."""
    for text in texts:
        ours = first(text, add_special_tokens=False, return_offsets_mapping=True)
        theirs = second(text, add_special_tokens=False)["input_ids"]
        if ours["input_ids"] == theirs:
            continue
        at = next((index for index, (a, b) in enumerate(zip(ours["input_ids"], theirs)) if a != b),
                  min(len(ours["input_ids"]), len(theirs)))
        offsets = ours["offset_mapping"]
        start = offsets[max(at - 1, 0)][0] if offsets else 0
        end = offsets[min(at + 1, len(offsets) - 1)][1] if offsets else len(text)
        window = slice(max(at - 1, 0), at + 2)
        return EncodingDifference(text[start:end] or text[:40], ours["input_ids"][window], theirs[window])
    return None


def train_tokenizer(texts: list[str | Path], vocabulary: int, folder: str | Path) -> Path:
    """A byte-level BPE tokenizer of ``vocabulary`` tokens (``<|endoftext|>`` the end-of-text, padding and
    beginning token) trained with ``tokenizers`` on the text files ``texts``, saved in ``folder`` for
    :func:`load_tokenizer`. For a model of your own trained from scratch; a pretrained teacher brings its own.

    Example: ``train_tokenizer(["corpus.txt"], 512, "tokenizer")``
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    missing = [str(path) for path in texts if not Path(path).is_file()]
    if missing:
        raise DataError(f"text file {missing[0]} does not exist")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocabulary, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train([str(path) for path in texts], trainer)
    end = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=end, bos_token=end, pad_token=end).save_pretrained(
        str(folder))
    return Path(folder)
