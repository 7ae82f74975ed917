"""Sampled teacher targets: the draws, the stored counts, and a gradient that is the forward KL's on average."""
import pytest
import torch

from distillery.losses.sampled import (
    log_weights,
    sampled_forward_kl,
    sampled_forward_kl_with_gradient,
    teacher_samples,
)
from distillery.losses.topk import teacher_top_k, top_k_forward_kl_with_gradient


def _full_gradient(student_logits, teacher_logits, temperature):
    """d/dz of T² · KL(p_T ‖ q_T), by autograd on the textbook formula: an independent reference."""
    student = student_logits.clone().requires_grad_(True)
    p = torch.softmax(teacher_logits / temperature, -1)
    kl = (p * (p.log() - torch.log_softmax(student / temperature, -1))).sum() * temperature ** 2
    kl.backward()
    return student.grad


def _mean_sampled_gradient(student_logits, teacher_logits, n, temperature, draws):
    generator = torch.Generator().manual_seed(7)
    rows = teacher_logits.expand(draws, -1)  # one position drawn `draws` times, independently
    counts, ids = teacher_samples(rows, n, temperature=temperature, generator=generator)
    _, gradient = sampled_forward_kl_with_gradient(student_logits.expand(draws, -1), log_weights(counts), ids,
                                                   temperature=temperature)
    return gradient.mean(0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_mean_sampled_gradient_is_the_full_forward_kl_gradient(temperature):
    torch.manual_seed(0)
    vocabulary, n, draws = 40, 12, 20000
    teacher_logits, student_logits = torch.randn(vocabulary) * 2.5, torch.randn(vocabulary)
    full = _full_gradient(student_logits, teacher_logits, temperature)
    mean = _mean_sampled_gradient(student_logits, teacher_logits, n, temperature, draws)
    # Each component's draw-to-draw spread is at most T · 0.5 / sqrt(n); over 20,000 draws the standard error of the
    # mean is at most T · 0.0010, so 0.005 · T is five standard errors.
    assert (mean - full).abs().max() < 0.005 * temperature


def test_top_k_targets_fail_the_same_test():
    # The check can fail: top-12 targets (with their tail bucket) keep the head's probabilities but not the tail's
    # shape, and their gradient misses the full one by more than the tolerance above.
    torch.manual_seed(0)
    teacher_logits, student_logits = torch.randn(40) * 2.5, torch.randn(40)
    _, gradient = top_k_forward_kl_with_gradient(student_logits.unsqueeze(0), *teacher_top_k(
        teacher_logits.unsqueeze(0), 12))
    assert (gradient[0] - _full_gradient(student_logits, teacher_logits, 1.0)).abs().max() > 0.005


def test_counts_sum_to_n_and_empty_slots_name_distinct_undrawn_tokens():
    logits = torch.tensor([[5.0, 4.0, -20.0, -20.0, -20.0, -20.0]])  # two likely tokens, four nearly impossible
    counts, ids = teacher_samples(logits, 5, generator=torch.Generator().manual_seed(0))
    assert counts.dtype == torch.uint8 and int(counts.sum()) == 5
    assert len(set(ids[0].tolist())) == 5  # no token twice
    drawn = ids[0][counts[0] > 0].tolist()
    assert set(drawn) <= {0, 1}
    assert counts[0].tolist() == sorted(counts[0].tolist(), reverse=True)


def test_same_generator_state_same_draws_and_n_checked():
    logits = torch.randn(3, 7, 50)
    first = teacher_samples(logits, 12, generator=torch.Generator().manual_seed(3))
    second = teacher_samples(logits, 12, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (3, 7, 12) and first[1].shape == (3, 7, 12)
    with pytest.raises(ValueError, match="one byte"):
        teacher_samples(logits, 256)


def test_written_out_gradient_matches_autograd_and_the_loss_by_hand():
    torch.manual_seed(1)
    student = torch.randn(4, 30, requires_grad=True)
    counts, ids = teacher_samples(torch.randn(4, 30), 6, generator=torch.Generator().manual_seed(0))
    weights = log_weights(counts)
    loss = sampled_forward_kl(student, weights, ids, temperature=2.0)
    loss.sum().backward()
    written, gradient = sampled_forward_kl_with_gradient(student.detach(), weights, ids, temperature=2.0)
    assert torch.allclose(written, loss.detach(), atol=1e-5)
    assert torch.allclose(gradient, student.grad, atol=1e-6)
    # By hand for the first row: T² · Σ_v w_v (log w_v − log q_v), q the student's softmax at T = 2.
    w = counts[0].float() / 6
    q = torch.softmax(student[0].detach() / 2.0, -1)[ids[0]]
    kept = w > 0
    assert torch.isclose(written[0], 4.0 * (w[kept] * (w[kept].log() - q[kept].log())).sum(), atol=1e-5)
