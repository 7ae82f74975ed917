"""The teacher's top-k next-token log-probabilities for every position of a transfer set, computed once and
memory-mapped, so a language model distils without running its teacher again.

A cache is a directory named by its fingerprint (the token blocks, the teacher's weights and architecture, k, the
storage) under ``$DISTILLERY_CACHE/top_k/``, holding ``values.npy`` (each position's top-k log-probabilities and the
log of the remaining mass, in one of :mod:`~distillery.teachers.target_storage`'s forms, ``[N, L, width]``),
``indices.npy`` (uint16 for vocabularies up to 65,536, else int32, ``[N, L, k]``) and ``manifest.json``, written last
into a temporary directory that is then renamed: a directory that exists is complete. Bytes a token: 2 · k (4 · k
with int32 indices) plus the values' (float32 4 · (k + 1), float16 2 · (k + 1), compact 18 at k = 64), against
V · 4 for the whole distribution.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from distillery.atomic import atomic_write_text
from distillery.cache_dir import default_cache_dir
from distillery.data.batch import model_logits
from distillery.data.text import TokenBlocks
from distillery.data.token_batches import token_batch
from distillery.errors import CheckpointError
from distillery.losses.topk import teacher_top_k
from distillery.teachers.cache import cache_key, fingerprint
from distillery.teachers.target_storage import STORAGES, decode, encode, value_bytes

FORMAT = "distillery-top-k"


class TopKTargets:
    """Memory-mapped top-k targets; ``targets[indices]`` gives the blocks' ``(values, token ids, tail)`` tensors
    ``[B, L, k]``, ``[B, L, k]`` (int64) and ``[B, L]``. ``manifest`` says k, the vocabulary, bytes a token and how
    fast the teacher made them. Raises CheckpointError for files that do not fit their manifest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.manifest = json.loads((directory / "manifest.json").read_text())
        load = lambda name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
        self.values, self.indices = load("values"), load("indices")
        k, blocks, length = self.manifest["k"], self.manifest["blocks"], self.manifest["block_length"]
        self.storage = self.manifest.get("storage")
        if self.storage not in STORAGES or self.indices.shape != (blocks, length, k) \
                or self.values.shape[:2] != (blocks, length):
            raise CheckpointError(f"the top-k cache {directory} holds arrays that do not fit its manifest; delete it")
        if int(self.indices.max()) >= self.manifest["vocabulary"]:
            raise CheckpointError(f"the top-k cache {directory} names tokens beyond the vocabulary; delete it")

    @property
    def bytes_per_token(self) -> int:
        return int(self.manifest["bytes_per_token"])

    def __getitem__(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = blocks.numpy()
        values, tail = decode(self.values[rows], self.storage, self.manifest["k"])
        return values, torch.from_numpy(self.indices[rows].astype(np.int64)), tail


def top_k_targets(teacher: nn.Module, blocks: TokenBlocks, k: int, *, storage: str = "float32", batch_size: int = 8,
                  device: torch.device | str = "cpu", progress: bool = True) -> tuple[TopKTargets, bool]:
    """The teacher's top-``k`` targets for ``blocks`` from the cache, stored as ``storage`` (float32, float16 or
    compact), built first when missing; returns them and whether they were built now.
    Example: ``targets, built = top_k_targets(teacher, data.train, 64, storage="compact")``"""
    packing = hashlib.sha256(blocks.positions.numpy().tobytes()).hexdigest()[:16] if blocks.positions is not None \
        else None  # packed conversations: where each starts decides what the teacher's attention sees
    value_bytes(storage, k)  # an unknown storage fails here, before the teacher runs
    parts = fingerprint(blocks.tokens, teacher, None, {"kind": "top_k", "k": k, "storage": storage,
                                                        "attention": blocks.attention is not None,
                                                        **({"packing": packing} if packing else {})})
    directory = default_cache_dir() / "top_k" / cache_key(parts)
    if (directory / "manifest.json").is_file():
        targets = TopKTargets(directory)
        if targets.manifest.get("fingerprint") == parts:
            return targets, False
    _build(teacher, blocks, k, storage, parts, directory, batch_size, device, progress)
    return TopKTargets(directory), True


@torch.no_grad()
def _build(teacher: nn.Module, blocks: TokenBlocks, k: int, storage: str, parts: dict[str, str], directory: Path,
           batch_size: int, device: torch.device | str, progress: bool) -> None:
    count, length = len(blocks), blocks.block_length
    vocabulary = int(teacher.config.vocab_size) if hasattr(teacher, "config") else None
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    index_type = np.uint16 if vocabulary is not None and vocabulary <= 65536 else np.int32
    indices = np.lib.format.open_memmap(temporary / "indices.npy", "w+", index_type, (count, length, k))
    values = None  # its dtype and width are the storage's: opened at the first batch
    teacher.eval().to(device)
    started = time.perf_counter()
    for start in tqdm(range(0, count, batch_size), desc=f"teacher top-{k}", disable=not progress, leave=False,
                      file=sys.stderr, unit="batch"):
        rows = torch.arange(start, min(start + batch_size, count))
        batch = token_batch(blocks, rows).to(device)
        logits = model_logits(teacher, batch.inputs)
        vocabulary = vocabulary or logits.shape[-1]
        top_values, top_indices, top_tail = teacher_top_k(logits, k)
        stored = encode(top_values.cpu(), top_tail.cpu(), storage)
        if values is None:
            values = np.lib.format.open_memmap(temporary / "values.npy", "w+", stored.dtype,
                                               (count, length, stored.shape[-1]))
        values[start: start + len(rows)] = stored
        indices[start: start + len(rows)] = top_indices.cpu().numpy().astype(index_type)
    seconds = time.perf_counter() - started
    for array in (values, indices):
        array.flush()
    manifest = {"format": FORMAT, "version": 2, "fingerprint": parts, "k": k, "storage": storage,
                "vocabulary": vocabulary, "blocks": count, "block_length": length,
                "bytes_per_token": k * np.dtype(index_type).itemsize + value_bytes(storage, k),
                "teacher_tokens_per_s": count * length / seconds, "build_seconds": seconds}
    atomic_write_text(temporary / "manifest.json", json.dumps(manifest, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)


def describe(targets: TopKTargets, built: bool) -> str:
    """One line on the targets: k, bytes a token against the whole distribution, and the teacher's speed."""
    manifest: dict[str, Any] = targets.manifest
    whole = manifest["vocabulary"] * 4
    how = (f"built at {manifest['teacher_tokens_per_s']:,.0f} teacher tokens/s" if built
           else f"reused from {targets.directory}")
    return (f"top-{manifest['k']} teacher targets ({manifest['storage']}): {targets.bytes_per_token} bytes a token "
            f"({whole:,} for the whole "
            f"distribution), {manifest['blocks'] * manifest['block_length']:,} tokens, {how}")
