"""The teacher's next-token targets for every position of a transfer set, computed once, in parallel and resumably,
and memory-mapped, so a language model distils without running its teacher again.

Two kinds (:class:`TargetSpec`): the top-k log-probabilities with one bucket for the rest
(:mod:`distillery.losses.topk`, stored as :mod:`~distillery.teachers.target_storage` says), or n tokens sampled
from the teacher's distribution at a temperature, with their counts (:mod:`distillery.losses.sampled`).

A store is a directory named by its fingerprint (the token blocks, the teacher, the spec) under
``$DISTILLERY_CACHE/top_k/``, holding ``values.npy`` (``[N, L, width]``: the storage's values, or uint8 counts),
``indices.npy`` (uint16 for vocabularies up to 65,536, else int32, ``[N, L, width]``), ``manifest.json`` and
``build.json`` (how fast the teacher went: the one file that differs between two builds). The blocks are built in
pieces of :data:`PIECE_BLOCKS`, each written atomically into ``<name>.pieces/``; under torchrun every process
builds every world-size-th piece, and rank 0 merges them into the store, which is written into a temporary
directory that is then renamed: a store directory that exists is complete. An interrupted build keeps its finished
pieces and continues from them, and the store it ends with is byte-identical to an uninterrupted build's: a piece's
batches and (for samples) its draws depend only on its blocks, never on which process made it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from distillery.atomic import atomic_write, atomic_write_text
from distillery.cache_dir import default_cache_dir
from distillery.data.batch import model_logits
from distillery.data.text import TokenBlocks
from distillery.data.token_batches import token_batch
from distillery.errors import CheckpointError
from distillery.losses.sampled import log_weights, teacher_samples
from distillery.losses.topk import teacher_top_k
from distillery.teachers.cache import cache_key, data_key, fingerprint
from distillery.teachers.target_storage import decode, encode, value_bytes

FORMAT = "distillery-token-targets"
PIECE_BLOCKS = 64  # blocks a piece: the unit of resuming and of sharding across processes
KINDS = ("top_k", "samples")


class OneProcess:
    """The processes building a store when there is one: what a torchrun context (``rank``, ``world_size``,
    ``is_main``, ``barrier()``) says of itself."""

    rank, world_size, is_main = 0, 1, True

    def barrier(self) -> None:
        return None


@dataclass(frozen=True)
class TargetSpec:
    """What is stored a position: ``kind`` top_k (``width`` = k, values in ``storage``: float32, float16, compact)
    or samples (``width`` = n draws at ``temperature``, from generators seeded by ``seed`` and the block's index;
    storage counts). Raises ValueError for another kind or storage."""

    kind: str
    width: int
    storage: str = "float32"
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "top_k":
            value_bytes(self.storage, self.width)  # an unknown storage fails here, before the teacher runs
        elif self.storage != "counts":
            raise ValueError("sampled targets are stored as counts")

    @classmethod
    def top_k(cls, k: int, storage: str = "float32") -> "TargetSpec":
        return cls("top_k", k, storage)

    @classmethod
    def samples(cls, n: int, temperature: float = 1.0, seed: int = 0) -> "TargetSpec":
        return cls("samples", n, "counts", temperature, seed)

    def value_bytes(self) -> int:
        return self.width if self.kind == "samples" else value_bytes(self.storage, self.width)

    def label(self) -> str:
        return (f"top-{self.width} teacher targets ({self.storage})" if self.kind == "top_k"
                else f"{self.width} sampled teacher tokens a position (T = {self.temperature:g})")


class TokenTargets:
    """A memory-mapped store; ``targets[blocks]`` gives the blocks' ``(values, token ids, tail)`` tensors
    ``[B, L, width]`` (float32 log-probabilities, or the samples' log weights log(c / n), −inf for an empty slot),
    ``[B, L, width]`` (int64) and ``[B, L]`` (the log of the mass outside; −inf for samples). ``spec`` says what it
    holds, ``manifest`` the rest. Raises CheckpointError for files that do not fit their manifest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.manifest = json.loads((directory / "manifest.json").read_text())
        build = directory / "build.json"
        self.build = json.loads(build.read_text()) if build.is_file() else {}
        load = lambda name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
        self.values, self.indices = load("values"), load("indices")
        try:
            self.spec = TargetSpec(**self.manifest["spec"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"the teacher-target store {directory} has a manifest of another version; "
                                  "delete it") from None
        shape = (self.manifest["blocks"], self.manifest["block_length"])
        if self.indices.shape != shape + (self.spec.width,) or self.values.shape[:2] != shape:
            raise CheckpointError(f"the teacher-target store {directory} holds arrays that do not fit its manifest; "
                                  "delete it")
        if self.indices.size and int(self.indices.max()) >= self.manifest["vocabulary"]:
            raise CheckpointError(f"the teacher-target store {directory} names tokens beyond the vocabulary; "
                                  "delete it")

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def bytes_per_token(self) -> int:
        return int(self.manifest["bytes_per_token"])

    def __getitem__(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = blocks.numpy()
        ids = torch.from_numpy(self.indices[rows].astype(np.int64))
        if self.spec.kind == "samples":
            weights = log_weights(torch.from_numpy(np.ascontiguousarray(self.values[rows])))
            return weights, ids, torch.full(weights.shape[:-1], float("-inf"))
        values, tail = decode(self.values[rows], self.spec.storage, self.spec.width)
        return values, ids, tail


def store_directory(blocks: TokenBlocks, spec: TargetSpec, teacher_key: str) -> tuple[Path, dict[str, str]]:
    """Where the store of ``spec`` for ``blocks`` from the teacher ``teacher_key`` is, and its fingerprint."""
    packing = hashlib.sha256(blocks.positions.numpy().tobytes()).hexdigest()[:16] if blocks.positions is not None \
        else None  # packed conversations: where each starts decides what the teacher's attention sees
    parts = {"data": data_key(blocks.tokens), "teacher": teacher_key, "spec": json.dumps(asdict(spec), sort_keys=True),
             "attention": str(blocks.attention is not None), **({"packing": packing} if packing else {})}
    return default_cache_dir() / "top_k" / cache_key(parts), parts


def cached_targets(blocks: TokenBlocks, spec: TargetSpec, teacher_key: str) -> TokenTargets | None:
    """The complete store for these blocks, spec and teacher, or None when it has not been built."""
    directory, parts = store_directory(blocks, spec, teacher_key)
    if (directory / "manifest.json").is_file():
        targets = TokenTargets(directory)
        if targets.manifest.get("fingerprint") == parts:
            return targets
    return None


def weights_key(teacher: nn.Module) -> str:
    """A teacher's key from its loaded weights and architecture (for teachers that are not files)."""
    return fingerprint(torch.zeros(0), teacher, None)["teacher"]


def teacher_targets(teacher: nn.Module, blocks: TokenBlocks, spec: TargetSpec, *, teacher_key: str | None = None,
                    context: Any = None, batch_size: int = 8,
                    device: torch.device | str = "cpu", progress: bool = True) -> tuple[TokenTargets, bool]:
    """The teacher's targets for ``blocks`` from the store, built first when missing (every process of ``context``,
    a torchrun :class:`~distillery.engine.distributed.DistributedContext` or :class:`OneProcess`, its share of the
    pieces, then rank 0 merges); returns them and whether they were built now. ``teacher_key`` names the teacher
    (default: a digest of its weights). Every process of ``context`` must call this.
    Example: ``targets, built = teacher_targets(teacher, data.train, TargetSpec.top_k(64, "compact"))``"""
    teacher_key = teacher_key or weights_key(teacher)
    context = context or OneProcess()
    directory, parts = store_directory(blocks, spec, teacher_key)
    found = cached_targets(blocks, spec, teacher_key)
    if found is not None:
        return found, False
    pieces = directory.with_name(directory.name + ".pieces")
    pieces.mkdir(parents=True, exist_ok=True)
    missing = [piece for piece in range(-(-len(blocks) // PIECE_BLOCKS))
               if not _piece_files(pieces, piece)[1].is_file()]
    context.barrier()  # every process has seen the same pieces missing before any is written
    started = time.perf_counter()
    _build_pieces(teacher, blocks, spec, pieces, missing[context.rank::context.world_size], batch_size, device,
                  progress)
    context.barrier()
    if context.is_main:  # the teacher's speed over this build's pieces, all processes together
        seconds = time.perf_counter() - started
        tokens = sum(len(range(piece * PIECE_BLOCKS, min((piece + 1) * PIECE_BLOCKS, len(blocks))))
                     for piece in missing) * blocks.block_length
        _merge(pieces, directory, blocks, spec, parts, teacher, {"teacher_tokens_per_s": tokens / max(seconds, 1e-9),
                                                                 "build_seconds": seconds,
                                                                 "processes": context.world_size})
    context.barrier()
    if not (directory / "manifest.json").is_file():
        raise CheckpointError(f"rank 0 wrote the teacher's targets to {directory}, which this process cannot see: "
                              "with several machines, DISTILLERY_CACHE must be a folder they share")
    return TokenTargets(directory), True


def _piece_files(pieces: Path, piece: int) -> tuple[Path, Path]:
    return pieces / f"indices-{piece:06d}.npy", pieces / f"values-{piece:06d}.npy"


@torch.no_grad()
def _build_pieces(teacher: nn.Module, blocks: TokenBlocks, spec: TargetSpec, pieces: Path, mine: list[int],
                  batch_size: int, device: torch.device | str, progress: bool) -> None:
    """This process's share of the missing pieces (``mine``), each written atomically."""
    count = len(blocks)
    teacher.eval().to(device)
    for piece in tqdm(mine, desc=spec.label().split(" (")[0], disable=not progress, leave=False, file=sys.stderr,
                      unit="piece"):
        first = piece * PIECE_BLOCKS
        rows_of_piece = range(first, min(first + PIECE_BLOCKS, count))
        stored_values, stored_ids = [], []
        for start in range(rows_of_piece.start, rows_of_piece.stop, batch_size):
            rows = torch.arange(start, min(start + batch_size, rows_of_piece.stop))
            batch = token_batch(blocks, rows).to(device)
            values, ids = _targets_of(model_logits(teacher, batch.inputs), rows, spec)
            stored_values.append(values)
            stored_ids.append(ids)
        indices_file, values_file = _piece_files(pieces, piece)
        # The ids first, the values last: a piece whose values file exists is whole.
        atomic_write(indices_file, lambda path: _save(path, np.concatenate(stored_ids)))
        atomic_write(values_file, lambda path: _save(path, np.concatenate(stored_values)))


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would add .npy to the temporary name
        np.save(handle, array, allow_pickle=False)


def _targets_of(logits: torch.Tensor, rows: torch.Tensor, spec: TargetSpec) -> tuple[np.ndarray, np.ndarray]:
    """One batch's stored values and ids (int64, narrowed at the merge) from the teacher's logits ``[B, L, V]``."""
    if spec.kind == "top_k":
        values, ids, tail = teacher_top_k(logits, spec.width)
        return encode(values.cpu(), tail.cpu(), spec.storage), ids.cpu().numpy()
    counts, ids = [], []
    for row, block in zip(logits, rows.tolist()):
        # One generator a block, seeded by the block's index: the draws do not depend on the batch or the process.
        generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + block)
        block_counts, block_ids = teacher_samples(row.cpu(), spec.width, temperature=spec.temperature,
                                                  generator=generator)
        counts.append(block_counts.numpy())
        ids.append(block_ids.numpy())
    return np.stack(counts), np.stack(ids)


def _merge(pieces: Path, directory: Path, blocks: TokenBlocks, spec: TargetSpec, parts: dict[str, str],
           teacher: nn.Module, build: dict[str, Any]) -> None:
    """Every piece into one store (written into a temporary directory, then renamed), then the pieces removed."""
    count, length = len(blocks), blocks.block_length
    files = [_piece_files(pieces, piece) for piece in range(-(-count // PIECE_BLOCKS))]
    missing = [str(values) for _, values in files if not values.is_file()]
    if missing:
        raise CheckpointError(f"{len(missing)} pieces of the teacher's targets are not in {pieces} (first: "
                              f"{missing[0]}): with several machines, DISTILLERY_CACHE must be a folder they share")
    vocabulary = int(teacher.config.vocab_size) if hasattr(teacher, "config") else None
    first_ids = np.load(files[0][0], mmap_mode="r", allow_pickle=False)
    first_values = np.load(files[0][1], mmap_mode="r", allow_pickle=False)
    vocabulary = vocabulary or int(first_ids.max()) + 1
    index_type = np.uint16 if vocabulary <= 65536 else np.int32
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    indices = np.lib.format.open_memmap(temporary / "indices.npy", "w+", index_type, (count, length, spec.width))
    values = np.lib.format.open_memmap(temporary / "values.npy", "w+", first_values.dtype,
                                       (count, length, first_values.shape[-1]))
    for piece, (ids_file, values_file) in enumerate(files):
        rows = slice(piece * PIECE_BLOCKS, min((piece + 1) * PIECE_BLOCKS, count))
        indices[rows] = np.load(ids_file, allow_pickle=False).astype(index_type)
        values[rows] = np.load(values_file, allow_pickle=False)
    for array in (values, indices):
        array.flush()
    del values, indices
    manifest = {"format": FORMAT, "version": 3, "fingerprint": parts, "spec": asdict(spec),
                "vocabulary": vocabulary, "blocks": count, "block_length": length,
                "bytes_per_token": spec.width * np.dtype(index_type).itemsize + spec.value_bytes()}
    atomic_write_text(temporary / "build.json", json.dumps(build, indent=2))
    atomic_write_text(temporary / "manifest.json", json.dumps(manifest, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    temporary.rename(directory)
    shutil.rmtree(pieces, ignore_errors=True)


def describe(targets: TokenTargets, built: bool) -> str:
    """One line on the targets: what they are, bytes a token against the whole distribution, and the teacher's
    speed."""
    manifest: dict[str, Any] = targets.manifest
    whole = manifest["vocabulary"] * 4
    speed = targets.build.get("teacher_tokens_per_s")
    how = (f"built at {speed:,.0f} teacher tokens/s" + (f" by {targets.build['processes']} processes"
                                                         if targets.build.get("processes", 1) > 1 else "")
           if built and speed else f"reused from {targets.directory}")
    return (f"{targets.spec.label()}: {targets.bytes_per_token} bytes a token ({whole:,} for the whole "
            f"distribution), {manifest['blocks'] * manifest['block_length']:,} tokens, {how}")

