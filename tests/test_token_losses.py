"""Token-level divergences against values written out with math, chunking, masks, dtypes and sums."""
import math

import pytest
import torch

from distillery.losses.tokens import token_divergence, token_loss

TEACHER = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
STUDENT = torch.tensor([[0.0, 0.0]])            # probabilities 1/2, 1/2


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


@pytest.mark.parametrize("kind, options, expected", [
    ("forward_kl", {}, kl([0.25, 0.75], [0.5, 0.5])),
    ("reverse_kl", {}, kl([0.5, 0.5], [0.25, 0.75])),
    ("total_variation", {}, 0.25),
    ("jsd", {"beta": 0.5}, 0.5 * kl([0.25, 0.75], [0.375, 0.625]) + 0.5 * kl([0.5, 0.5], [0.375, 0.625])),
    ("jsd", {"beta": 0.2}, 0.2 * kl([0.25, 0.75], [0.45, 0.55]) + 0.8 * kl([0.5, 0.5], [0.45, 0.55])),
    ("jsd", {"beta": 0.0}, kl([0.25, 0.75], [0.5, 0.5])),
    ("jsd", {"beta": 1.0}, kl([0.5, 0.5], [0.25, 0.75])),
    ("skew_kl", {"alpha": 0.1}, kl([0.25, 0.75], [0.475, 0.525])),
])
def test_each_divergence_equals_its_formula_written_out(kind, options, expected):
    value = token_divergence(STUDENT, TEACHER, kind=kind, **options)
    assert value.shape == (1,) and value.item() == pytest.approx(expected, rel=1e-5)


def test_temperature_softens_both_and_the_kl_family_is_scaled_by_t_squared():
    teacher = [1 / (1 + 3 ** 0.5), 3 ** 0.5 / (1 + 3 ** 0.5)]  # softmax of [0, ln 3] / 2
    value = token_divergence(STUDENT, TEACHER, kind="forward_kl", temperature=2.0)
    assert value.item() == pytest.approx(4 * kl(teacher, [0.5, 0.5]), rel=1e-5)
    variation = token_divergence(STUDENT, TEACHER, kind="total_variation", temperature=2.0)
    assert variation.item() == pytest.approx(0.5 * sum(abs(t - 0.5) for t in teacher), rel=1e-5)


def test_the_mean_counts_masked_positions_only_and_chunks_change_nothing():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 7, 50, generator=generator), torch.randn(3, 7, 50, generator=generator)
    mask = torch.rand(3, 7, generator=generator) > 0.4
    per_token = token_divergence(student, teacher, kind="jsd", beta=0.3)
    expected = per_token[mask].mean()
    for chunk in (1, 4, 1024):
        got = token_loss(student, teacher, mask, chunk_size=chunk, kind="jsd", beta=0.3)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # Padding is not counted: changing the logits at masked-out positions changes nothing.
    noisy = student.masked_fill(~mask[..., None], 100.0)
    assert token_loss(noisy, teacher, mask, kind="jsd", beta=0.3).item() == pytest.approx(expected.item(), rel=1e-5)
    assert token_loss(student, teacher, torch.zeros(3, 7, dtype=torch.bool)).item() == 0.0


def test_sums_over_micro_batches_divided_by_the_total_count_equal_one_batch():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4, 5, 11, generator=generator), torch.randn(4, 5, 11, generator=generator)
    mask = torch.rand(4, 5, generator=generator) > 0.3
    whole = token_loss(student, teacher, mask, kind="reverse_kl")
    parts = [token_loss(student[i:i + 2], teacher[i:i + 2], mask[i:i + 2], reduction="sum", kind="reverse_kl")
             for i in (0, 2)]
    assert (sum(parts) / mask.sum()).item() == pytest.approx(whole.item(), rel=1e-6)


def test_bf16_logits_are_compared_in_float32_and_gradients_flow():
    student = torch.randn(2, 3, 20, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(2, 3, 20, dtype=torch.bfloat16)
    loss = token_loss(student, teacher, kind="forward_kl")
    assert loss.dtype == torch.float32
    expected = token_loss(student.detach().float(), teacher.float(), kind="forward_kl")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad.float()).all()
    with pytest.raises(ValueError, match="unknown divergence"):
        token_divergence(student, teacher, kind="cross")
