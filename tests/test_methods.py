"""Methods: the loss they compose, and the frozen-teacher contract."""
import pytest
import torch
from torch import nn

from distillery.data import Batch
from distillery.errors import ConfigError, ModelError
from distillery.losses import hard_label_cross_entropy, logit_mse, soft_target_kl
from distillery.methods import HintonDistillation, LogitMatching, Supervised, create_method


def teacher_with_dropout_and_batch_norm():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def test_hinton_loss_is_alpha_ce_plus_one_minus_alpha_t_squared_kl():
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), teacher_with_dropout_and_batch_norm()
    method = HintonDistillation(student, teacher, temperature=3.0, alpha=0.25)
    inputs, labels = batch()
    output = method.step(Batch(inputs, labels))
    with torch.no_grad():
        teacher_logits = teacher(inputs)
    student_logits = student(inputs)
    expected = 0.25 * hard_label_cross_entropy(student_logits, labels) + 0.75 * soft_target_kl(
        student_logits, teacher_logits, 3.0)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(output.logs) == {"ce", "kd"}


def test_logit_matching_uses_mse():
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    method = LogitMatching(student, teacher, alpha=0.0)
    inputs, labels = batch()
    assert method.step(Batch(inputs, labels)).loss.item() == pytest.approx(
        logit_mse(student(inputs), teacher(inputs)).item(), rel=1e-6)


def test_without_labels_the_soft_term_keeps_its_weight_one_minus_alpha():
    """One rule for alpha: the soft term always weighs 1 - alpha; a batch without labels only lacks the hard term."""
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    inputs, labels = batch()
    soft = soft_target_kl(student(inputs), teacher(inputs), 2.0).item()
    for alpha in (0.0, 0.9):
        method = HintonDistillation(student, teacher, temperature=2.0, alpha=alpha)
        output = method.step(Batch(inputs))
        assert output.loss.item() == pytest.approx((1 - alpha) * soft, rel=1e-6)
        assert "ce" not in output.logs
        # A batch whose labels are all hidden (-1) gives the same loss as one with none.
        hidden = method.step(Batch(inputs, torch.full_like(labels, -1)))
        assert hidden.loss.item() == pytest.approx((1 - alpha) * soft, rel=1e-6)


def test_alpha_one_leaves_the_teacher_no_weight_and_is_refused():
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\).*distillery train"):
        HintonDistillation(nn.Linear(6, 3), nn.Linear(6, 3), alpha=1.0)


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    student, teacher = nn.Linear(6, 3), teacher_with_dropout_and_batch_norm()
    teacher.train()
    method = HintonDistillation(student, teacher, temperature=4.0, alpha=0.5)
    method.train()
    assert method.student.training and not method.teacher.training
    assert all(not module.training for module in method.teacher.modules())
    running_mean = method.teacher[1].running_mean.clone()
    inputs, labels = batch()
    method.step(Batch(inputs, labels)).loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.parameters())
    assert torch.equal(method.teacher[1].running_mean, running_mean)  # batch-norm statistics untouched
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in student.parameters()}


def test_teacher_outputs_are_deterministic_during_training():
    student, teacher = nn.Linear(6, 3), teacher_with_dropout_and_batch_norm()
    method = HintonDistillation(student, teacher).train()
    inputs, _ = batch()
    assert torch.equal(method.teacher(inputs), method.teacher(inputs))  # dropout off


def test_class_count_mismatch_is_a_clear_error():
    method = HintonDistillation(nn.Linear(6, 4), nn.Linear(6, 3))
    inputs, labels = batch()
    with pytest.raises(ModelError, match="same classes"):
        method.step(Batch(inputs, labels))


@pytest.mark.parametrize("options", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": 1.5}, {"alpha": -0.1}])
def test_out_of_range_hyperparameters(options):
    with pytest.raises(ConfigError):
        HintonDistillation(nn.Linear(6, 3), nn.Linear(6, 3), **options)


def test_create_method_refuses_options_the_method_does_not_take():
    method = create_method("logit_mse", nn.Linear(6, 3), nn.Linear(6, 3), temperature=None, alpha=0.3)
    assert isinstance(method, LogitMatching) and method.alpha == 0.3
    with pytest.raises(ConfigError, match="does not take temperature"):
        create_method("logit_mse", nn.Linear(6, 3), nn.Linear(6, 3), temperature=4.0)
    assert isinstance(create_method("supervised", nn.Linear(6, 3)), Supervised)
    with pytest.raises(ConfigError, match="needs a teacher"):
        create_method("hinton", nn.Linear(6, 3))
    with pytest.raises(ConfigError, match="hinton"):
        create_method("no-such-method", nn.Linear(6, 3))
    with pytest.raises(ConfigError, match="needs student_layer and teacher_layer"):
        create_method("fitnet", nn.Linear(6, 3), nn.Linear(6, 3), student_layer=None)


def test_precomputed_teacher_logits_give_the_same_step_as_the_live_teacher():
    from distillery.data import ArrayDataset, BatchIterator
    from distillery.teachers.precomputed import precompute_logits

    torch.manual_seed(0)
    dataset = ArrayDataset(torch.randn(40, 6), torch.randint(0, 3, (40,)), ["a", "b", "c"])
    teacher = teacher_with_dropout_and_batch_norm()
    table = precompute_logits(teacher, BatchIterator(dataset, 7), len(dataset))
    live = HintonDistillation(nn.Linear(6, 3), teacher, temperature=3.0, alpha=0.2)
    cached = HintonDistillation(nn.Linear(6, 3), teacher, temperature=3.0, alpha=0.2)
    cached.student.load_state_dict(live.student.state_dict())
    cached.use_precomputed_teacher_logits(table)
    for inputs, labels, indices in BatchIterator(dataset, 16, shuffle=True, seed=4):
        expected = live.step(Batch(inputs, labels, indices=indices))
        got = cached.step(Batch(inputs, labels, indices=indices))
        assert torch.allclose(got.loss, expected.loss, atol=1e-6)
        assert torch.allclose(got.logs["kd"], expected.logs["kd"], atol=1e-6)
