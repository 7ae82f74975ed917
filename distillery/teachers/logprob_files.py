"""Teacher targets made elsewhere: per-position top-k log-probabilities from vLLM (``prompt_logprobs``) or a column of
``{token_id, logprob}`` lists in JSON Lines or Parquet (the layout Axolotl and DistillKit users keep), aligned to the
run's blocks by token ids and stored as a top-k store (:mod:`distillery.teachers.token_targets`).

A row holds its text (``text`` or ``prompt``: what the ids were made from, e.g. a rendered conversation), its token
ids (``prompt_token_ids``, ``input_ids`` or ``token_ids``) and its log-probabilities (``prompt_logprobs`` or
``logprobs``): one entry a position, each ``None``, a list of ``{"token_id": int, "logprob": float}``, or a
mapping from token id to a log-probability or to ``{"logprob": float, ...}`` (vLLM's ``Logprob``). With as many
entries as ids, entry i is the distribution of token i given those before it (vLLM's layout: entry 0 is None);
with one fewer, entry i is the distribution of token i + 1 (the next-token layout).

Each row's text is tokenised with the run's tokenizer and must give the row's ids; the rows' ids, in order, must
contain every training block's tokens. A position whose token starts a row (packed text: the next line or
document) has no distribution in the file and learns that token (its cross-entropy); the run says how many. Every
position keeps the k most likely tokens, k the fewest any counted
position has (vLLM adds the prompt's own token when it is outside the top k: such extras go to the tail); the tail's
mass, which the files do not give, is 1 − the top k's probability.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillery.atomic import atomic_write_text
from distillery.cache_dir import default_cache_dir
from distillery.data.text import TokenBlocks
from distillery.errors import DataError
from distillery.teachers.cache import cache_key, data_key
from distillery.teachers.token_targets import FORMAT, TargetSpec, TokenTargets

TEXT_KEYS = ("text", "prompt")
ID_KEYS = ("prompt_token_ids", "input_ids", "token_ids")
LOGPROB_KEYS = ("prompt_logprobs", "logprobs")
WINDOW = 16  # tokens a block is looked up by before its whole run is compared


class _Rows:
    """The file's rows as one stream of token ids and, per stream position, the distribution of that token given
    the ones before it in its row (None at a row's first token)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.distributions: list[tuple[np.ndarray, np.ndarray] | None] = []


def read_rows(path: str | Path, tokenizer: Any) -> _Rows:
    """The rows of a ``.jsonl`` or ``.parquet`` logprob file, each checked against ``tokenizer``. Raises DataError in
    one line for an unreadable file, a row without text, ids or log-probabilities, entries that do not fit the ids,
    and ids this tokenizer does not make of the row's text (naming the row and the first position that differs)."""
    path = Path(path)
    rows = _raw_rows(path)
    stream = _Rows()
    for number, row in enumerate(rows, start=1):
        where = f"{path} row {number}"
        text, ids, entries = (_field(row, keys, where) for keys in (TEXT_KEYS, ID_KEYS, LOGPROB_KEYS))
        ids = [int(token) for token in ids]
        _check_ids(tokenizer, str(text), ids, where)
        if len(entries) == len(ids) - 1 and entries and entries[0] is None:
            raise DataError(f"{where} has {len(ids)} token ids and {len(entries)} log-probability entries starting "
                            "with null: vLLM's layout needs one entry an id (is the last one missing?)")
        if len(entries) == len(ids) - 1:
            entries = [None, *entries]  # the next-token layout: entry i was token i + 1's
        elif len(entries) != len(ids):
            raise DataError(f"{where} has {len(ids)} token ids but {len(entries)} log-probability entries; give one "
                            "an id (vLLM's prompt_logprobs) or one fewer (entry i for token i + 1)")
        stream.ids += ids
        stream.distributions += [_distribution(entry, where, position, len(tokenizer)) if position else None
                                 for position, entry in enumerate(entries)]
    return stream


def _raw_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl" and path.is_file():
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not JSON: {error.msg}") from None
    elif path.suffix == ".parquet" and path.is_file():
        import pyarrow
        import pyarrow.parquet as parquet

        try:
            rows = parquet.read_table(path).to_pylist()
        except pyarrow.ArrowException as error:
            raise DataError(f"{path} is not a readable Parquet file: {str(error).splitlines()[0]}") from None
    elif not path.exists():
        raise DataError(f"the teacher's log-probability file {path} does not exist")
    else:
        raise DataError(f"the teacher's log-probability file {path} is not a .jsonl or .parquet file")
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path} holds no rows of text, token ids and log-probabilities")
    return rows


def _field(row: dict, keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    raise DataError(f"{where} has none of {', '.join(keys)}")


def _check_ids(tokenizer: Any, text: str, ids: list[int], where: str) -> None:
    ours = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ours == ids:
        return
    first = next((i for i, (a, b) in enumerate(zip(ours, ids)) if a != b), min(len(ours), len(ids)))
    theirs = ids[first] if first < len(ids) else "nothing"
    mine = ours[first] if first < len(ours) else "nothing"
    shown = lambda token: token if token == "nothing" else f"{token} {tokenizer.decode([token])!r}"  # noqa: E731
    raise DataError(f"{where}: token {first} is {shown(theirs)} in the file but {shown(mine)} with this run's "
                    "tokenizer; the log-probabilities were made with another tokenizer")


def _distribution(entry: Any, where: str, position: int, vocabulary: int) -> tuple[np.ndarray, np.ndarray]:
    """An entry as (token ids, log-probabilities), most likely first. Raises DataError for an empty entry, ids outside
    the vocabulary, log-probabilities above 0 or not numbers, or probabilities that add up to more than 1."""
    if not entry:
        raise DataError(f"{where}: entry {position} is empty; every token after a row's first needs its "
                        "log-probabilities")
    try:
        if isinstance(entry, dict):
            pairs = [(int(token), float(value["logprob"] if isinstance(value, dict) else value))
                     for token, value in entry.items()]
        else:
            pairs = [(int(item["token_id"]), float(item["logprob"])) for item in entry]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: entry {position} is not {{token_id: logprob}} or a list of "
                        "{token_id, logprob}") from None
    if any(not math.isfinite(logprob) and logprob != -math.inf or logprob > 1e-4 for _, logprob in pairs):
        raise DataError(f"{where}: entry {position} holds a log-probability that is not ≤ 0")
    outside = [token for token, _ in pairs if not 0 <= token < vocabulary]
    if outside:
        raise DataError(f"{where}: entry {position} names token {outside[0]}, outside this tokenizer's {vocabulary} "
                        "tokens")
    total = sum(math.exp(logprob) for _, logprob in pairs)
    if total > 1.01:
        raise DataError(f"{where}: entry {position}'s probabilities add up to {total:.3f}, more than 1; are these "
                        "log-probabilities (log-softmax), not logits?")
    pairs.sort(key=lambda pair: -pair[1])
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.float32)


def file_targets(path: str | Path, tokenizer: Any, blocks: TokenBlocks) -> TokenTargets:
    """The file's targets for ``blocks`` as a top-k store (built once, under ``$DISTILLERY_CACHE/top_k/``, keyed by
    the file's bytes and the blocks). Raises DataError as :func:`read_rows` does, and for blocks the rows do not
    cover (naming the first)."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".jsonl", ".parquet"):
        _raw_rows(path)  # says, in one line, what is wrong with the path
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    parts = {"file": digest, "data": data_key(blocks.tokens),
             "counted": hashlib.sha256(blocks.counted.numpy().tobytes()).hexdigest()[:16]}
    directory = default_cache_dir() / "top_k" / cache_key(parts)
    if not (directory / "manifest.json").is_file():
        _write(_aligned(read_rows(path, tokenizer), blocks, path), directory, parts, blocks, len(tokenizer))
    return TokenTargets(directory)


def describe_file_targets(targets: TokenTargets, path: str | Path) -> str:
    """One line on targets read from ``path``: k, the blocks, the computed tail, the positions without a
    distribution."""
    starts = targets.manifest["row_starts"]
    return (f"teacher targets read from {path}: the top {targets.spec.width} log-probabilities a position (the fewest "
            f"any counted position has), {targets.manifest['blocks']} blocks aligned by token ids; the file gives no "
            "tail mass, so it is computed as 1 − the top's probability"
            + (f"; {starts:,} positions predict the first token of a row, which the file has no distribution for: "
               "they learn that token" if starts else ""))


def _aligned(rows: _Rows, blocks: TokenBlocks, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per block and position, the k most likely tokens' ids and log-probabilities ``[N, L, k]`` (uncounted
    positions: the first k ids at log(1/k), never read)."""
    stream = np.asarray(rows.ids, dtype=np.int64)
    starts: dict[bytes, list[int]] = {}
    for start in range(max(len(stream) - WINDOW + 1, 0)):
        starts.setdefault(stream[start:start + WINDOW].tobytes(), []).append(start)
    count, length = len(blocks), blocks.block_length
    counted = blocks.counted.numpy()
    found: list[tuple[int, int]] = []  # (stream offset, tokens compared) per block
    for block in range(count):
        # The block's tokens up to the last one a counted position predicts: padding after it is nobody's row.
        predicted = np.flatnonzero(counted[block])
        real = int(predicted[-1]) + 2 if len(predicted) else 1
        run = blocks.tokens[block].numpy()[:real]
        candidates = starts.get(run[:WINDOW].tobytes(), []) if real >= WINDOW else range(len(stream) - real + 1)
        offset = next((start for start in candidates if np.array_equal(stream[start:start + real], run)), None)
        if offset is None:
            raise DataError(f"the rows of {path} do not cover training block {block} (it starts "
                            f"{run[:8].tolist()}); give log-probabilities for every row of the run's data")
        found.append((offset, real))
    widths = [len(rows.distributions[offset + p + 1][0]) for block, (offset, real) in enumerate(found)
              for p in np.flatnonzero(counted[block]) if offset + p + 1 < len(stream)
              and rows.distributions[offset + p + 1] is not None]
    k = min(widths) if widths else 1
    values = np.full((count, length, k), -math.log(k), dtype=np.float32)
    ids = np.broadcast_to(np.arange(k, dtype=np.int64), (count, length, k)).copy()
    tails = np.full((count, length), np.nan, dtype=np.float32)  # NaN: computed from the top k
    starts_of_rows = 0
    for block, (offset, _) in enumerate(found):
        for p in np.flatnonzero(counted[block]):
            distribution = rows.distributions[offset + p + 1]
            if distribution is None:
                # The token starts a row (packed text: the next line or document), which no row predicts: the
                # target is that token itself, all its mass, the tail empty (the loss there is its cross-entropy).
                token = int(stream[offset + p + 1])
                ids[block, p] = [token] + [t for t in range(k + 1) if t != token][: k - 1]
                values[block, p] = [0.0] + [-np.inf] * (k - 1)
                tails[block, p] = -np.inf
                starts_of_rows += 1
                continue
            ids[block, p], values[block, p] = distribution[0][:k], distribution[1][:k]
    return values, ids, tails, starts_of_rows


def _write(arrays: tuple, directory: Path, parts: dict[str, str], blocks: TokenBlocks, vocabulary: int) -> None:
    values, ids, given_tails, starts_of_rows = arrays
    k = values.shape[-1]
    top = torch.from_numpy(values)
    # The mass outside the top k, which the files leave out: 1 − their probability (none when they hold it all).
    held = torch.logsumexp(top, dim=-1).clamp(max=0.0)
    tail = torch.log(-torch.expm1(held)).masked_fill(held > -1e-6, float("-inf"))
    given = torch.from_numpy(given_tails)
    tail = torch.where(given.isnan(), tail, given)
    vocabulary = max(vocabulary, int(ids.max()) + 1)
    index_type = np.uint16 if vocabulary <= 65536 else np.int32
    spec = TargetSpec.top_k(k, "float32")
    temporary = directory.with_name(directory.name + ".tmp")
    temporary.mkdir(parents=True, exist_ok=True)
    for name, array in (("indices", ids.astype(index_type)),
                        ("values", torch.cat([top, tail.unsqueeze(-1)], dim=-1).numpy())):
        with open(temporary / f"{name}.npy", "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    manifest = {"format": FORMAT, "version": 3, "fingerprint": parts, "spec": asdict(spec), "source": "file",
                "row_starts": starts_of_rows,
                "vocabulary": vocabulary, "blocks": len(blocks), "block_length": blocks.block_length,
                "bytes_per_token": k * np.dtype(index_type).itemsize + spec.value_bytes()}
    atomic_write_text(temporary / "manifest.json", json.dumps(manifest, indent=2))
    temporary.rename(directory)
