"""The loss formulas against values computed by hand and against independent formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from distillery.losses import hard_label_cross_entropy, logit_mse, soft_target_kl


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_soft_target_kl_matches_hand_computation():
    student = [[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]
    teacher = [[2.0, 1.0, 0.0], [1.0, -1.0, 2.0]]
    temperature = 2.0
    expected = 0.0
    for s, t in zip(student, teacher):
        p, q = softmax(t, temperature), softmax(s, temperature)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / len(student) * temperature**2  # batchmean, times T²
    loss = soft_target_kl(torch.tensor(student), torch.tensor(teacher), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_kl_is_batchmean_not_elementwise_mean():
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    ours = soft_target_kl(student, teacher, 1.0)
    batchmean = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), reduction="batchmean", log_target=True)
    teacher_probs = F.softmax(teacher, -1)
    elementwise_mean = (teacher_probs * (teacher_probs.log() - F.log_softmax(student, -1))).mean()
    assert ours.item() == pytest.approx(batchmean.item(), rel=1e-6)
    assert ours.item() == pytest.approx(10 * elementwise_mean.item(), rel=1e-6)


def test_soft_target_kl_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 5)
    assert soft_target_kl(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_term_gradient_scales_as_one_over_t_squared_before_the_t_squared_factor():
    torch.manual_seed(0)
    # Zero-mean logits close to each other: the regime where Hinton's 1/T² argument is exact in the limit.
    student_base = torch.randn(16, 10) * 0.1
    teacher = torch.randn(16, 10) * 0.1
    norms = {}
    for temperature in (5.0, 10.0, 20.0):
        student = student_base.clone().requires_grad_(True)
        raw_kl = soft_target_kl(student, teacher, temperature) / temperature**2
        (gradient,) = torch.autograd.grad(raw_kl, student)
        norms[temperature] = gradient.norm().item()
    assert norms[5.0] / norms[10.0] == pytest.approx(4.0, rel=0.02)
    assert norms[10.0] / norms[20.0] == pytest.approx(4.0, rel=0.02)


def test_t_squared_factor_makes_gradient_size_independent_of_temperature():
    torch.manual_seed(1)
    student_base, teacher = torch.randn(16, 10) * 0.1, torch.randn(16, 10) * 0.1
    norms = []
    for temperature in (8.0, 16.0):
        student = student_base.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(soft_target_kl(student, teacher, temperature), student)
        norms.append(gradient.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.02)


def test_high_temperature_limit_is_squared_logit_difference_over_two_classes():
    torch.manual_seed(2)
    classes = 10
    # float64: at T = 1000 the KL is ~1e-6 before the T² factor, below float32's resolution of the log-probs.
    student = torch.randn(32, classes, dtype=torch.float64)
    teacher = torch.randn(32, classes, dtype=torch.float64)
    student = student - student.mean(dim=1, keepdim=True)
    teacher = teacher - teacher.mean(dim=1, keepdim=True)
    independent = ((student - teacher) ** 2).sum(dim=1).mean() / (2 * classes)
    assert soft_target_kl(student, teacher, 1000.0).item() == pytest.approx(independent.item(), rel=1e-3)
    # At low temperature the two differ clearly, so the test above can fail.
    assert abs(soft_target_kl(student, teacher, 1.0).item() - independent.item()) > 0.1 * independent.item()
    # logit_mse averages over classes, so T²·KL tends to half of it.
    assert logit_mse(student, teacher).item() / 2 == pytest.approx(independent.item(), rel=1e-6)


def test_logit_mse_hand_value():
    assert logit_mse(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx((1 + 4) / 2)


def test_hard_label_cross_entropy_is_at_temperature_one():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -math.log(softmax([2.0, 0.0, -1.0], 1.0)[0])
    assert hard_label_cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError):
        soft_target_kl(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
