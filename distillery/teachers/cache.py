"""The teacher-output cache: a teacher's outputs on a fixed transfer set, computed once and kept on disk.

A cache is two files: ``<stem>.npy`` (float16, opened memory-mapped, one row per sample index) and
``<stem>.json`` (its fingerprint and layout), the JSON written last so its presence means the array is
complete. The fingerprint hashes what the outputs depend on: the transfer set's inputs in index order,
the teacher's weights and architecture, and the preprocessing. A cache whose fingerprint differs from the
run's is refused, never silently used. With many classes only the top-k logits are kept (see
:func:`expand_top_k`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from distillery.atomic import atomic_write, atomic_write_text
from distillery.cache_dir import default_cache_dir
from distillery.errors import CheckpointError


class NonFiniteCache(CheckpointError):
    """A cache file holds infinite or NaN values."""
from distillery.teachers.precomputed import precompute_logits

FORMAT = "distillery-teacher-cache"
# Above this many classes a full float16 table grows large; the top-k logits hold almost all the mass.
TOP_K_ABOVE_CLASSES = 100
TOP_K = 20


def _digest(*chunks: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Raw bytes, read as uint8: works for every dtype (numpy has no bfloat16) and tells dtypes apart by size.
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _input_chunks(inputs, rows: int = 4096):
    """The inputs' bytes, a slice of ``rows`` samples at a time: memory-mapped inputs are never held whole."""
    if isinstance(inputs, torch.Tensor):
        yield _tensor_bytes(inputs)
        return
    for start in range(0, len(inputs), rows):
        yield _tensor_bytes(inputs[start:start + rows])


def data_key(inputs: torch.Tensor) -> str:
    """A digest of a tensor's shape and bytes (memory-mapped inputs read a slice at a time)."""
    return _digest(str(tuple(inputs.shape)).encode(), *_input_chunks(inputs))


def fingerprint(inputs: torch.Tensor, teacher: nn.Module, preprocessing: dict[str, Any] | None,
                view: Any = None) -> dict[str, str]:
    """What a teacher's outputs on ``inputs`` depend on, each part hashed: data, teacher, preprocessing.

    ``view`` describes seeded augmented views (settings, seed, count), or is None for the plain inputs.

    Example::

        expected = fingerprint(train.inputs, teacher, normalizer.to_dict())
    """
    state = teacher.state_dict()
    weights = _digest(*(name.encode() + _tensor_bytes(state[name]) for name in sorted(state)))
    return {
        "data": data_key(inputs),
        "teacher": _digest(weights.encode(), repr(teacher).encode()),
        "preprocessing": _digest(json.dumps([preprocessing, view], sort_keys=True).encode()),
    }


def cache_key(parts: dict[str, str]) -> str:
    return _digest(json.dumps(parts, sort_keys=True).encode())


@dataclass
class CacheFiles:
    stem: Path

    @property
    def array(self) -> Path:
        return self.stem.with_suffix(".npy")

    @property
    def manifest(self) -> Path:
        return self.stem.with_suffix(".json")

    def exists(self) -> bool:
        return self.manifest.is_file() and self.array.is_file()


def _stale_parts(recorded: dict[str, str], expected: dict[str, str]) -> list[str]:
    names = {"data": "transfer data", "teacher": "teacher weights", "preprocessing": "preprocessing",
             "layer": "teacher layer"}
    return [names.get(part, part) for part in expected if recorded.get(part) != expected[part]]


class LogitTable:
    """Teacher logits looked up by sample index, from a (memory-mapped) cache array, as float32.

    Rows are expanded only when looked up, so a table far larger than memory costs only its batches.
    """

    def __init__(self, array: np.ndarray, classes: int, top_k: int | None) -> None:
        self.array, self.classes, self.top_k = array, classes, top_k

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(np.ascontiguousarray(self.array[np.asarray(indices)])).float()
        return expand_top_k(rows, self.classes, self.top_k) if self.top_k else rows


def read_cache(files: CacheFiles, expected: dict[str, str]) -> tuple[dict[str, Any], np.ndarray]:
    """A cache's manifest and memory-mapped array if its fingerprint is ``expected``; otherwise a
    CheckpointError saying what changed."""
    try:
        manifest = json.loads(files.manifest.read_text())
        array = np.load(files.array, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"teacher cache {files.array} is unreadable ({error}); delete it and run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{files.manifest} is not a distillery teacher cache; point teacher_cache elsewhere")
    stale = _stale_parts(manifest.get("fingerprint", {}), expected)
    if stale:
        raise CheckpointError(f"teacher cache {files.array} was built for different {' and '.join(stale)}; rebuild it "
                              "(distillery cache CONFIG --rebuild) or delete it")
    if list(array.shape) != manifest.get("shape"):
        raise CheckpointError(f"teacher cache {files.array} has shape {list(array.shape)} but its manifest says "
                              f"{manifest.get('shape')}; delete it and run again")
    if not all_finite(array):
        raise NonFiniteCache(f"teacher cache {files.array} holds infinite or NaN values (a float16 store that "
                             "overflowed); rebuild it (distillery cache CONFIG --rebuild) or delete it")
    return manifest, array


def all_finite(array: np.ndarray, rows: int = 65536) -> bool:
    """Whether every value of a (memory-mapped) array is finite, read a slice of ``rows`` at a time."""
    return all(bool(np.isfinite(array[start:start + rows]).all()) for start in range(0, len(array), rows))


def reusable_cache(files: CacheFiles, expected: dict[str, str], *, explicit: bool, rebuild: bool,
                   open_table=None) -> Any:
    """The valid cache at ``files`` opened (by ``open_table``, default :func:`open_cache`), or None when it
    must be computed: missing, ``rebuild``, or an automatic entry holding non-finite values (an older
    float16 store that overflowed, replaced rather than reused). A cache the user named explicitly is
    never replaced unasked: a mismatch or a non-finite value there is a CheckpointError."""
    if rebuild or not files.exists():
        return None
    try:
        return (open_table or open_cache)(files, expected)
    except NonFiniteCache:
        if explicit:
            raise
        return None


def open_cache(files: CacheFiles, expected: dict[str, str]) -> LogitTable:
    """The cached logit table if its fingerprint is ``expected`` (see :func:`read_cache`)."""
    manifest, array = read_cache(files, expected)
    return LogitTable(array, manifest["classes"], manifest.get("top_k"))


def save_cache(files: CacheFiles, array: np.ndarray, manifest: dict[str, Any]) -> None:
    """Store ``array`` and its manifest (format, shape and dtype added), array first, manifest last."""
    files.stem.parent.mkdir(parents=True, exist_ok=True)

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.save(handle, array)

    atomic_write(files.array, save)
    manifest = {"format": FORMAT, "version": 1, **manifest, "shape": list(array.shape), "dtype": str(array.dtype)}
    atomic_write_text(files.manifest, json.dumps(manifest, indent=2))


def write_cache(files: CacheFiles, logits: torch.Tensor, parts: dict[str, str]) -> None:
    """Store finite ``logits`` [N, classes], array first, manifest last: float16 when every value fits its
    range (|z| <= 65,504), float32 otherwise, so nothing stored turns infinite; with many classes the top-k
    log-probabilities (float32). Raises ValueError on non-finite logits (the caller reports the teacher)."""
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("teacher logits to cache must be finite")
    classes = logits.shape[1]
    top_k = TOP_K if classes > TOP_K_ABOVE_CLASSES else None
    # float32 for top-k tables: they hold class indices too, which float16 keeps exact only up to 2048.
    if top_k:
        array = compress_top_k(logits, top_k).numpy()
    else:
        fits = float(logits.abs().max()) <= torch.finfo(torch.float16).max if logits.numel() else True
        array = logits.to(torch.float16 if fits else torch.float32).numpy()
    save_cache(files, array, {"fingerprint": parts, "classes": classes, "top_k": top_k})


def compress_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[N, C] logits -> [N, 2k]: the k largest log-probabilities and their class indices.

    Log-probabilities rather than logits, so the mass outside the top-k is known: 1 − Σ exp(top-k).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    values, indices = log_probs.topk(k, dim=-1)
    return torch.cat([values, indices.float()], dim=1)


def expand_top_k(rows: torch.Tensor, classes: int, k: int) -> torch.Tensor:
    """[N, 2k] -> [N, C] log-probabilities: the top-k exactly, the remaining mass spread evenly over the rest.

    Their softmax at T = 1 is the teacher's distribution on its top-k classes; at other temperatures the
    tail is an approximation, as with any top-k cache.
    """
    values, indices = rows[:, :k], rows[:, k:].long()
    rest = (1.0 - values.exp().sum(dim=1, keepdim=True)).clamp_min(1e-12) / max(classes - k, 1)
    full = rest.log().expand(-1, classes).clone()
    return full.scatter_(1, indices, values)


def cached_teacher_logits(teacher: nn.Module, inputs: torch.Tensor, batches: Iterable, size: int, *,
                          stem: Path | None, preprocessing: dict[str, Any] | None, view: Any = None,
                          cache_dir: Path | None = None, rebuild: bool = False) -> tuple[LogitTable | torch.Tensor, str]:
    """The teacher's logits for every index ``batches`` yields (``size`` of them): from a valid cache, else
    computed and cached. ``inputs`` (the transfer set) and ``view`` (how augmented views derive from it)
    enter the fingerprint.

    ``stem`` names the cache explicitly (a mismatching one is refused); None uses ``cache_dir`` (default
    :func:`default_cache_dir`) with the fingerprint as the name, so any run with the same teacher, data and
    preprocessing finds it. ``rebuild`` recomputes and replaces it. Returns the table and a line saying
    where it came from.
    """
    parts = fingerprint(inputs, teacher, preprocessing, view)
    files = CacheFiles(Path(stem) if stem is not None else (cache_dir or default_cache_dir()) / cache_key(parts))
    table = reusable_cache(files, parts, explicit=stem is not None, rebuild=rebuild)
    if table is not None:
        return table, f"teacher outputs read from the cache {files.array}"
    logits = precompute_logits(teacher, batches, size)
    try:
        write_cache(files, logits, parts)
    except OSError as error:
        if stem is not None:
            raise CheckpointError(f"cannot write the teacher cache {files.array} ({error.strerror}); "
                                  "choose a writable teacher_cache path") from None
        # The automatic cache is an optimisation: an unwritable cache directory must not stop the run.
        return logits, f"teacher outputs computed once (not cached: {files.stem.parent} is not writable)"
    return open_cache(files, parts), f"teacher outputs computed once and cached in {files.array}"
