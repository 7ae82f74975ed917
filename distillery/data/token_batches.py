"""Batches of token blocks for causal language models, reproducible per (seed, epoch)."""
from __future__ import annotations

import torch

from distillery.data.batch import Batch
from distillery.data.indexed_batches import IndexedBatches
from distillery.data.text import TokenBlocks

# Hugging Face's ignore index: a position whose label is this is left out of every hard-label term.
IGNORED = -100


class TokenBatches(IndexedBatches):
    """Iterates :class:`TokenBlocks` as :class:`~distillery.data.batch.Batch` es.

    Each batch's inputs are ``{"input_ids": [B, L]}`` (plus ``"attention_mask"`` when the blocks have padding, and
    ``"position_ids"`` when they pack several conversations), its
    labels the next tokens ``[B, L]`` (``-100`` where a prediction does not count), its mask the counted predictions
    ``[B, L]`` and its indices the blocks' positions (int64, CPU), which a teacher-output cache is keyed by. The order
    depends only on (seed, epoch), so a resumed run sees the same batches. Example::

        batches = TokenBatches(train_blocks, batch_size=8, shuffle=True, seed=0)
        batches.set_epoch(1)
        batch = next(iter(batches))
    """

    def __init__(self, blocks: TokenBlocks, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__(len(blocks), batch_size, shuffle, seed)
        self.blocks = blocks

    def batch(self, indices: torch.Tensor) -> Batch:
        return token_batch(self.blocks, indices)


def token_batch(blocks: TokenBlocks, indices: torch.Tensor) -> Batch:
    """The batch of the blocks at ``indices``: inputs, next-token labels, the counted mask."""
    tokens = blocks.tokens[indices]
    counted = blocks.counted[indices]
    inputs = {"input_ids": tokens[:, :-1]}
    if blocks.attention is not None:
        inputs["attention_mask"] = blocks.attention[indices].long()
    if blocks.positions is not None:  # packed conversations: positions restart, so attention stays within each
        inputs["position_ids"] = blocks.positions[indices]
    labels = tokens[:, 1:].masked_fill(~counted, IGNORED)
    return Batch(inputs, labels, counted, indices)
