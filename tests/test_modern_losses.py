"""DKD, DIST and logit standardisation: formulas against independent computations, their
properties, the methods that use them, and a learning test for each."""
import math
import statistics

import numpy as np
import pytest
import torch
from torch import nn

from distillery.data import Batch
from distillery.errors import ConfigError
from distillery.losses import decoupled_kd, dist_loss, hard_label_cross_entropy, soft_target_kl, standardize_logits
from distillery.methods import DIST, DecoupledKD, HintonDistillation, create_method


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: with the cores busy, torch's intra-op threads wait on each other and a
    # 300-step fit takes 15 s instead of 0.2 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def random_logits(seed, shape=(6, 5), scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


# --- decoupled KD -------------------------------------------------------------------------------

def test_decoupled_kd_matches_per_sample_loops():
    student, teacher = random_logits(0), random_logits(1)
    labels = [0, 4, 2, 2, 1, 3]
    temperature, alpha, beta = 3.0, 1.5, 0.7
    total = 0.0
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels):
        p_student, p_teacher = softmax(s, temperature), softmax(t, temperature)
        tckd = kl([p_teacher[y], 1 - p_teacher[y]], [p_student[y], 1 - p_student[y]])
        # Renormalise the probabilities of the other classes, the paper's p-hat.
        rest_student = [p / (1 - p_student[y]) for i, p in enumerate(p_student) if i != y]
        rest_teacher = [p / (1 - p_teacher[y]) for i, p in enumerate(p_teacher) if i != y]
        total += alpha * tckd + beta * kl(rest_teacher, rest_student)
    expected = total / len(labels) * temperature**2
    loss = decoupled_kd(student, teacher, torch.tensor(labels), temperature, alpha=alpha, beta=beta)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_decoupled_kd_is_zero_when_student_equals_teacher():
    logits = random_logits(2)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    assert decoupled_kd(logits, logits.clone(), labels, 4.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed, label", [(3, 0), (4, 2), (5, 4)])
def test_classical_kd_is_tckd_plus_teacher_non_target_mass_times_nckd(seed, label):
    student, teacher = random_logits(seed, (1, 5)), random_logits(seed + 10, (1, 5))
    temperature = 2.5
    teacher_target_prob = torch.softmax(teacher / temperature, dim=1)[0, label].item()
    decomposed = decoupled_kd(student, teacher, torch.tensor([label]), temperature,
                              alpha=1.0, beta=1.0 - teacher_target_prob)
    assert decomposed.item() == pytest.approx(soft_target_kl(student, teacher, temperature).item(), rel=1e-10)


def test_decoupled_kd_is_finite_for_a_very_confident_teacher():
    # float32 at T = 1: the teacher's non-target mass underflows to 0 (log 0 = −inf in a naive form).
    teacher = torch.tensor([[120.0, 0.0, -3.0, 1.0]])
    student = torch.tensor([[0.5, 0.2, -0.1, 0.0]], requires_grad=True)
    loss = decoupled_kd(student, teacher, torch.tensor([0]), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


# --- DIST ---------------------------------------------------------------------------------------

def test_dist_loss_matches_numpy_corrcoef():
    student, teacher = random_logits(6, (8, 5)), random_logits(7, (8, 5))
    temperature, beta, gamma = 2.0, 0.6, 1.7

    def probs(logits):
        exps = np.exp(logits.numpy() / temperature)
        return exps / exps.sum(axis=1, keepdims=True)

    p_student, p_teacher = probs(student), probs(teacher)
    per_sample = [np.corrcoef(p_student[i], p_teacher[i])[0, 1] for i in range(8)]
    per_class = [np.corrcoef(p_student[:, j], p_teacher[:, j])[0, 1] for j in range(5)]
    expected = temperature**2 * (beta * (1 - np.mean(per_sample)) + gamma * (1 - np.mean(per_class)))
    loss = dist_loss(student, teacher, temperature, beta=beta, gamma=gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_dist_is_zero_for_identical_logits():
    logits = random_logits(8, (8, 5)).float()
    assert dist_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-5)


def test_dist_ignores_a_per_sample_constant_on_the_student_logits():
    # Softmax is unchanged by a per-sample shift, so both correlations are too.
    student, teacher = random_logits(9, (8, 5)), random_logits(10, (8, 5))
    shifted = student + torch.arange(8, dtype=torch.float64).view(8, 1) * 3.0
    assert dist_loss(shifted, teacher).item() == pytest.approx(dist_loss(student, teacher).item(), rel=1e-10)


def test_dist_gradient_is_finite_for_a_batch_of_one():
    # One sample: every class column is constant across the batch, its correlation undefined.
    student = random_logits(11, (1, 5)).requires_grad_(True)
    loss = dist_loss(student, random_logits(12, (1, 5)))
    loss.backward()
    assert torch.isfinite(student.grad).all()


# --- logit standardisation ----------------------------------------------------------------------

def test_standardize_matches_statistics_module():
    logits = random_logits(13, (3, 7))
    result = standardize_logits(logits)
    for row, standardized in zip(logits.tolist(), result.tolist()):
        mean, std = statistics.fmean(row), statistics.pstdev(row)
        assert standardized == pytest.approx([(v - mean) / (std + 1e-7) for v in row], rel=1e-9)
        assert statistics.pstdev(standardized) == pytest.approx(1.0, rel=1e-6)


def test_standardize_maps_a_constant_vector_to_zeros_with_a_finite_gradient():
    logits = torch.full((2, 4), 3.0, requires_grad=True)
    result = standardize_logits(logits)
    (result * torch.arange(4.0)).sum().backward()
    assert torch.equal(result, torch.zeros(2, 4)) and torch.isfinite(logits.grad).all()


def teacher_student_batch(classes=5):
    torch.manual_seed(14)
    student, teacher = nn.Linear(6, classes), nn.Linear(6, classes)
    return student, teacher, torch.randn(16, 6), torch.randint(0, classes, (16,))


def test_standardized_hinton_ignores_the_scale_and_offset_of_the_student_logits():
    student, teacher, inputs, labels = teacher_student_batch()
    method = HintonDistillation(student, teacher, temperature=2.0, alpha=0.0, standardize=True)
    loss = method.step(Batch(inputs, labels)).loss.item()
    with torch.no_grad():
        student.weight.mul_(3.0)
        student.bias.mul_(3.0).add_(5.0)  # logits become 3·z + 5
    assert method.step(Batch(inputs, labels)).loss.item() == pytest.approx(loss, rel=1e-5)
    plain = HintonDistillation(student, teacher, temperature=2.0, alpha=0.0)
    assert abs(plain.step(Batch(inputs, labels)).loss.item() - loss) > 0.01  # without it, scale matters


def test_standardize_never_reaches_the_hard_label_term():
    student, teacher, inputs, labels = teacher_student_batch()
    method = HintonDistillation(student, teacher, alpha=0.3, standardize=True)
    output = method.step(Batch(inputs, labels))
    student_logits, teacher_logits = student(inputs), teacher(inputs)
    expected = 0.3 * hard_label_cross_entropy(student_logits, labels) + 0.7 * soft_target_kl(
        standardize_logits(student_logits), standardize_logits(teacher_logits), 4.0)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert output.logs["ce"].item() == pytest.approx(hard_label_cross_entropy(student_logits, labels).item())


# --- the methods ----------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch, factor", [(1, 0.05), (10, 0.5), (20, 1.0), (30, 1.0)])
def test_dkd_warmup_factor(epoch, factor):
    method = DecoupledKD(nn.Linear(6, 5), nn.Linear(6, 5), warmup_epochs=20)
    method.set_epoch(epoch)
    assert method.warmup_factor == pytest.approx(factor)


@pytest.mark.parametrize("standardize", [False, True])
def test_dkd_loss_is_ce_weight_ce_plus_warmup_times_dkd(standardize):
    student, teacher, inputs, labels = teacher_student_batch()
    method = DecoupledKD(student, teacher, temperature=3.0, tckd_weight=0.5, nckd_weight=2.0, ce_weight=0.7,
                         warmup_epochs=4, standardize=standardize)
    method.set_epoch(3)
    output = method.step(Batch(inputs, labels))
    student_logits, teacher_logits = student(inputs), teacher(inputs)
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    expected = 0.7 * hard_label_cross_entropy(student(inputs), labels) + 0.75 * decoupled_kd(
        student_logits, teacher_logits, labels, 3.0, alpha=0.5, beta=2.0)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(output.logs) == {"ce", "kd"}


def test_dkd_without_labels_is_a_config_error_that_names_the_alternatives():
    student, teacher, inputs, _ = teacher_student_batch()
    with pytest.raises(ConfigError, match="needs every sample.s label.*hinton.*dist"):
        DecoupledKD(student, teacher).step(Batch(inputs))


def test_dist_method_without_labels_uses_the_relation_loss_at_one_minus_alpha():
    student, teacher, inputs, _ = teacher_student_batch()
    output = DIST(student, teacher, temperature=2.0, alpha=0.5).step(Batch(inputs))
    assert output.loss.item() == pytest.approx(0.5 * dist_loss(student(inputs), teacher(inputs), 2.0).item(), rel=1e-6)


def test_create_method_builds_modern_methods_and_refuses_foreign_options():
    dkd = create_method("dkd", nn.Linear(6, 5), nn.Linear(6, 5), temperature=2.0, standardize=True, warmup_epochs=5)
    assert isinstance(dkd, DecoupledKD) and dkd.standardize and dkd.warmup_epochs == 5
    assert dkd.tckd_weight == 1.0 and dkd.nckd_weight == 8.0
    dist = create_method("dist", nn.Linear(6, 5), nn.Linear(6, 5), alpha=0.3, beta=0.5, standardize=True)
    assert isinstance(dist, DIST) and dist.alpha == 0.3 and dist.beta == 0.5 and dist.standardize
    assert create_method("logit_mse", nn.Linear(6, 5), nn.Linear(6, 5), standardize=True).standardize
    # The hard-label alpha means nothing to DKD (it has ce_weight): saying it is a mistake, not a no-op.
    with pytest.raises(ConfigError, match="does not take alpha"):
        create_method("dkd", nn.Linear(6, 5), nn.Linear(6, 5), alpha=0.3)
    with pytest.raises(ConfigError, match="does not take beta"):
        create_method("hinton", nn.Linear(6, 5), nn.Linear(6, 5), beta=0.5)


@pytest.mark.parametrize("name, options", [
    ("dkd", {"temperature": 0.0}), ("dkd", {"nckd_weight": -1.0}), ("dkd", {"warmup_epochs": -1}),
    ("dist", {"temperature": -1.0}), ("dist", {"gamma": -0.5}), ("dist", {"alpha": 1.5}),
])
def test_out_of_range_hyperparameters(name, options):
    with pytest.raises(ConfigError):
        create_method(name, nn.Linear(6, 5), nn.Linear(6, 5), **options)


# --- learning -------------------------------------------------------------------------------------

def blobs(generator, count, centers):
    labels = torch.randint(0, len(centers), (count,), generator=generator)
    return centers[labels] + torch.randn(count, centers.shape[1], generator=generator), labels


@pytest.fixture(scope="module")
def blob_problem():
    """10 Gaussian blobs in 8-D and a linear teacher fitted to them."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 8, generator=generator) * 2.5
    train, test = blobs(generator, 512, centers), blobs(generator, 512, centers)
    torch.manual_seed(0)
    teacher = nn.Linear(8, 10)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        hard_label_cross_entropy(teacher(train[0]), train[1]).backward()
        optimizer.step()
    return train, test, teacher


def agreement(student, teacher, inputs):
    with torch.no_grad():
        return (student(inputs).argmax(1) == teacher(inputs).argmax(1)).float().mean().item()


@pytest.mark.parametrize("name, options", [
    ("dkd", {"ce_weight": 0.0, "warmup_epochs": 0}),  # the DKD term alone
    ("dist", {"alpha": 0.0}),
    ("hinton", {"alpha": 0.0, "temperature": 2.0, "standardize": True}),
])
def test_method_teaches_a_fresh_student_to_agree_with_the_teacher(blob_problem, name, options):
    (train_inputs, train_labels), (test_inputs, _), teacher = blob_problem
    torch.manual_seed(1)
    student = nn.Linear(8, 10)
    before = agreement(student, teacher, test_inputs)
    method = create_method(name, student, teacher, **options)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=0.05)
    for _ in range(100):
        loss = method.step(Batch(train_inputs, train_labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = agreement(student, teacher, test_inputs)
    assert before < 0.5 and after > 0.8, (before, after)
