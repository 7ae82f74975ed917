"""How a top-k cache stores the teacher's log-probabilities: exact in float32, close in float16, and the compact code
(12-bit knots, interpolated, renormalised) within a stated divergence of the exact top-k distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.losses.topk import teacher_top_k
from distillery.teachers.target_storage import _pack12, _unpack12, decode, encode, knot_ranks, value_bytes


def teacher_like(rows: int = 128, vocabulary: int = 4096, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Logits with a few likely tokens above a broad rest, as a language model's often are."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocabulary, generator=generator) * scale
    logits[:, :4] += 8 * torch.rand(rows, 4, generator=generator)
    return logits


def distributions(values, tail):
    return torch.cat([values, tail.unsqueeze(-1)], dim=-1)


@pytest.mark.parametrize("count", [1, 2, 7, 12])
def test_twelve_bit_codes_pack_three_bytes_a_pair_and_come_back(count):
    codes = np.random.default_rng(count).integers(0, 4096, size=(3, 5, count))
    codes[0, 0] = 4095
    packed = _pack12(codes)
    assert packed.dtype == np.uint8 and packed.shape == (3, 5, 3 * ((count + 1) // 2))
    assert np.array_equal(_unpack12(packed, count), codes)


def test_the_sizes_a_position_takes():
    assert value_bytes("float32", 64) == 260 and value_bytes("float16", 64) == 130
    assert value_bytes("compact", 64) == 18  # 11 knots and the tail: 12 codes of 12 bits
    assert 64 * 2 + value_bytes("compact", 64) <= 150  # with 16-bit ids
    assert knot_ranks(64) == [0, 1, 2, 3, 4, 6, 10, 15, 25, 39, 63] and knot_ranks(5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown storage"):
        value_bytes("int4", 64)


def test_float32_is_exact_and_float16_within_its_rounding():
    values, _, tail = teacher_top_k(teacher_like(), 64)
    exact = decode(encode(values, tail, "float32"), "float32", 64)
    assert torch.equal(exact[0], values) and torch.equal(exact[1], tail)
    half_values, half_tail = decode(encode(values, tail, "float16"), "float16", 64)
    # float16 keeps 11 significant bits: a relative error of at most 2^-11 of each log-probability.
    assert torch.allclose(half_values, values, rtol=2 ** -11, atol=0)
    assert torch.allclose(half_tail, tail, rtol=2 ** -11, atol=0)


@pytest.mark.parametrize("scale", [0.5, 3.0, 6.0])
def test_compact_keeps_the_knots_to_a_step_and_the_distribution_within_a_few_thousandths_of_a_nat(scale):
    values, _, tail = teacher_top_k(teacher_like(scale=scale), 64)
    decoded_values, decoded_tail = decode(encode(values, tail, "compact"), "compact", 64)
    step = 40 / 4095
    assert (decoded_tail - tail).abs().max() <= step / 2 + 1e-6
    exact, decoded = distributions(values, tail), distributions(decoded_values, decoded_tail)
    assert torch.allclose(decoded.exp().sum(-1), torch.ones(len(values)), atol=1e-5)  # a distribution again
    # The knots are quantised to half a step; renormalising moves them by what interpolation added elsewhere.
    shift = (decoded_values - values)[:, knot_ranks(64)]
    assert (shift - shift.mean(-1, keepdim=True)).abs().max() <= step
    kl = (exact.exp() * (exact - decoded)).sum(-1)
    # Measured: mean 2e-5 to 1.8e-3 nats a position, the sharper distributions the larger (the top-64 cut itself
    # costs about 0.05 on SmolLM2, BENCHMARKS.md).
    assert kl.mean() < 2.5e-3 and kl.max() < 2.5e-2
    assert (decoded_values[:, 1:] <= decoded_values[:, :-1] + 1e-6).all()  # still sorted


def test_compact_with_few_tokens_keeps_every_value_and_an_empty_tail():
    logits = teacher_like(rows=16, vocabulary=8)
    values, _, tail = teacher_top_k(logits, 8)
    assert torch.isinf(tail).all()
    decoded_values, decoded_tail = decode(encode(values, tail, "compact"), "compact", 8)
    assert torch.isinf(decoded_tail).all()
    assert torch.allclose(decoded_values, values, atol=40 / 4095)
