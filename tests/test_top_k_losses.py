"""Top-k teacher targets with one tail bucket: exact at k = V, a lower bound below it that tightens as k grows."""
import math

import pytest
import torch

from distillery.losses.tokens import token_divergence
from distillery.losses.topk import teacher_top_k, top_k_divergence


def logits(seed=0, shape=(6, 40)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * 3, torch.randn(*shape, generator=generator) * 3


def test_the_top_k_and_the_tail_hold_all_the_mass_computed_by_hand():
    values, indices, tail = teacher_top_k(torch.tensor([[0.0, math.log(2.0), math.log(5.0)]]), 2)
    # Probabilities 1/8, 2/8, 5/8: the top two are 5/8 and 2/8, the tail 1/8.
    assert indices.tolist() == [[2, 1]]
    assert values.exp().tolist()[0] == pytest.approx([5 / 8, 2 / 8])
    assert tail.exp().item() == pytest.approx(1 / 8)
    full = teacher_top_k(torch.tensor([[0.0, 1.0]]), 2)[2]
    assert full.item() == float("-inf")  # nothing left: an empty bucket, which adds 0 to a divergence


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_k_equal_to_the_vocabulary_is_exact_and_smaller_k_bounds_it_from_below(kind):
    student, teacher = logits()
    exact = token_divergence(student, teacher, kind=kind)
    student.requires_grad_(True)
    full = top_k_divergence(student, *teacher_top_k(teacher, 40), kind=kind)
    torch.testing.assert_close(full.detach(), exact.detach(), rtol=1e-5, atol=1e-5)
    full.sum().backward()
    assert bool(torch.isfinite(student.grad).all())  # the empty tail bucket sends no NaN back
    student = student.detach()
    previous = torch.zeros(6)
    for k in (1, 4, 16, 39):
        bounded = top_k_divergence(student, *teacher_top_k(teacher, k), kind=kind)
        assert bool((bounded <= exact + 1e-5).all())
        if kind == "forward_kl":  # refining the teacher's top buckets only adds terms to the forward KL's sum
            assert bool((bounded >= previous - 1e-5).all())
        previous = bounded


def test_the_bucketed_forward_kl_equals_the_formula_over_buckets():
    student = torch.tensor([[0.0, 0.0, 0.0, 0.0]])            # 1/4 each
    teacher = torch.tensor([[math.log(6.0), math.log(2.0), 0.0, 0.0]])  # 6/10, 2/10, 1/10, 1/10
    value = top_k_divergence(student, *teacher_top_k(teacher, 2))
    expected = 0.6 * math.log(0.6 / 0.25) + 0.2 * math.log(0.2 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        teacher_top_k(teacher, 5)
    with pytest.raises(ValueError):
        top_k_divergence(student, *teacher_top_k(teacher, 2), kind="jsd")
