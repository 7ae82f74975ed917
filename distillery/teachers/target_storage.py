"""How a top-k cache stores the teacher's log-probabilities: float32, float16, or a compact code of 12-bit knots.

The token ids are stored apart (16 bits each for vocabularies up to 65,536). The values of one position are its
top-k log-probabilities, sorted from the most likely down, and the log of the mass outside them (the tail):

* ``float32``: k + 1 floats, 4 · (k + 1) bytes (exact);
* ``float16``: k + 1 halves, 2 · (k + 1) bytes (a log-probability above −8 keeps 3 decimal digits: the
  probability's relative error is at most 0.4%);
* ``compact``: the sorted log-probabilities at a few ranks (every rank up to 4, then ranks spaced geometrically to
  k − 1; all k when k ≤ 11) and the tail, each quantised to 12 bits on [−40, 0] (steps of 0.0098 nats), two codes
  packed in 3 bytes. The ranks between two knots are interpolated linearly (the curve is monotone, so the result is
  too), and the k values are then renormalised so that they and the tail hold exactly one unit of probability. At
  k = 64: 11 knots and the tail, 18 bytes; with 16-bit ids, 146 bytes a token against 388 for float32.

The cost of each in nats a token is measured in BENCHMARKS.md ("Smaller top-k targets").
"""
from __future__ import annotations

import math

import numpy as np
import torch

STORAGES = ("float32", "float16", "compact")
FLOOR = 40.0  # log-probabilities below −40 (probability 4e-18) are stored as −40; a tail there as empty
LEVELS = 4095  # 12 bits


def knot_ranks(k: int) -> list[int]:
    """The ranks whose log-probabilities ``compact`` keeps: 0..4 and geometrically spaced ranks to k − 1."""
    if k <= 11:
        return list(range(k))
    spaced = np.geomspace(6, k - 1, 6).round().astype(int).tolist()
    return sorted(set(range(5)) | set(spaced))


def value_bytes(storage: str, k: int) -> int:
    """Bytes a position's values and tail take (ids apart)."""
    if storage == "float32":
        return 4 * (k + 1)
    if storage == "float16":
        return 2 * (k + 1)
    if storage == "compact":
        return 3 * math.ceil((len(knot_ranks(k)) + 1) / 2)
    raise ValueError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")


def encode(values: torch.Tensor, tail: torch.Tensor, storage: str) -> np.ndarray:
    """``values`` ``[..., k]`` (sorted, descending) and ``tail`` ``[...]`` as the stored array ``[..., width]``:
    float32 or float16 (values then tail), or uint8 codes (``compact``)."""
    rows = torch.cat([values.float(), tail.float().unsqueeze(-1)], dim=-1)
    if storage == "float32":
        return rows.numpy()
    if storage == "float16":
        return rows.half().numpy()  # −inf (an empty tail) stays −inf
    if storage != "compact":
        raise ValueError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    knots = rows[..., knot_ranks(values.shape[-1]) + [-1]]
    codes = torch.round(knots.neg().clamp(0.0, FLOOR) * (LEVELS / FLOOR)).to(torch.int32)
    return _pack12(codes.numpy())


def decode(stored: np.ndarray, storage: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored array back as float32 ``values`` ``[..., k]`` and ``tail`` ``[...]`` (−inf: nothing outside)."""
    if storage in ("float32", "float16"):
        rows = torch.from_numpy(np.ascontiguousarray(stored)).float()
        return rows[..., :k], rows[..., k]
    ranks = knot_ranks(k)
    knots = torch.from_numpy(_unpack12(stored, len(ranks) + 1)).float() * (-FLOOR / LEVELS)
    tail = knots[..., -1].masked_fill(knots[..., -1] <= -FLOOR, float("-inf"))
    values = knots[..., :-1] @ _interpolation(ranks, k)
    # The top k hold what the tail leaves: renormalised, the k + 1 buckets are a distribution again.
    held = torch.log1p(-tail.exp().clamp(max=1.0 - 1e-7))
    return values + (held - torch.logsumexp(values, dim=-1)).unsqueeze(-1), tail


def _interpolation(ranks: list[int], k: int) -> torch.Tensor:
    """The ``[knots, k]`` matrix that interpolates every rank linearly between the knots around it."""
    weights = torch.zeros(len(ranks), k)
    for position, rank in enumerate(range(k)):
        right = next(index for index, knot in enumerate(ranks) if knot >= rank)
        if ranks[right] == rank:
            weights[right, position] = 1.0
            continue
        left = right - 1
        share = (rank - ranks[left]) / (ranks[right] - ranks[left])
        weights[left, position], weights[right, position] = 1.0 - share, share
    return weights


def _pack12(codes: np.ndarray) -> np.ndarray:
    """12-bit codes ``[..., n]`` (int) as bytes ``[..., 3 · ceil(n / 2)]``: each pair a, b in three bytes."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), codes.dtype)], axis=-1)
    first, second = codes[..., 0::2].astype(np.uint16), codes[..., 1::2].astype(np.uint16)
    packed = np.stack([first & 0xFF, (first >> 8) | ((second & 0xF) << 4), second >> 4], axis=-1)
    return packed.astype(np.uint8).reshape(codes.shape[:-1] + (-1,))


def _unpack12(packed: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` 12-bit codes of :func:`_pack12`'s bytes, as int32."""
    triples = np.asarray(packed).reshape(packed.shape[:-1] + (-1, 3)).astype(np.int32)
    first = triples[..., 0] | ((triples[..., 1] & 0xF) << 8)
    second = (triples[..., 1] >> 4) | (triples[..., 2] << 4)
    return np.stack([first, second], axis=-1).reshape(packed.shape[:-1] + (-1,))[..., :count]
