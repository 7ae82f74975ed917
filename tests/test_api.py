"""The in-memory Python API with a user's own modules and DataLoaders."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distillery
from distillery.data import Augmentation
from distillery.errors import DataError


def digits_loaders():
    train, test = distillery.load_dataset("digits")
    flatten = lambda d: TensorDataset(d.inputs.flatten(1), d.labels)  # noqa: E731
    return (DataLoader(flatten(train), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(flatten(test), batch_size=256))


def teacher_and_student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))
    student = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    return teacher, student


def test_train_distill_evaluate_with_user_objects():
    train_loader, test_loader = digits_loaders()
    teacher, student = teacher_and_student()
    teacher = distillery.train(teacher, train_loader, test_loader, epochs=8, lr=0.005, progress=False).model
    before = distillery.evaluate(student, test_loader)["accuracy"]
    teacher_mode = (teacher.training, [p.requires_grad for p in teacher.parameters()])
    result = distillery.distill(teacher, student, train_loader, test_loader, temperature=4.0, alpha=0.1,
                                epochs=8, lr=0.005, progress=False)
    assert result.model is student and len(result.history) == 8
    assert {"train/ce", "train/kd", "val/accuracy"} <= set(result.history[-1])
    metrics = distillery.evaluate(result.model, test_loader, teacher=teacher, latency=True)
    assert metrics["accuracy"] > 0.75 > before
    assert metrics["agreement"] > 0.8
    assert 0 <= metrics["ece"] < 0.2 and metrics["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    assert metrics["latency"]["batch1_p95_ms"] >= metrics["latency"]["batch1_median_ms"] > 0
    # Frozen while it taught; the caller gets it back as it was.
    assert (teacher.training, [p.requires_grad for p in teacher.parameters()]) == teacher_mode


def test_same_seed_same_weights():
    train_loader, _ = digits_loaders()
    weights = []
    for _ in range(2):
        teacher, student = teacher_and_student()
        train_loader.generator.manual_seed(0)
        distillery.distill(teacher, student, train_loader, epochs=2, progress=False, seed=3)
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_array_dataset_is_accepted_directly():
    train, test = distillery.load_dataset("digits")
    model = distillery.build_model({"name": "cnn", "channels": [16, 32]}, train.input_shape, train.num_classes)
    result = distillery.train(model, train, test, epochs=3, batch_size=64, lr=0.01, progress=False)
    assert result.metrics["val/accuracy"] > 0.8


def test_one_shot_iterator_is_refused():
    _, student = teacher_and_student()
    batches = ((torch.randn(4, 64), torch.zeros(4, dtype=torch.long)) for _ in range(2))
    with pytest.raises(DataError, match="one-shot"):
        distillery.train(student, batches, epochs=1, progress=False)


class Unsized:
    def __iter__(self):
        yield torch.randn(4, 64), torch.zeros(4, dtype=torch.long)


def test_unsized_data_needs_a_constant_schedule():
    _, student = teacher_and_student()
    with pytest.raises(DataError, match="no length"):
        distillery.train(student, Unsized(), epochs=1, progress=False)
    result = distillery.train(student, Unsized(), epochs=2, schedule="constant", progress=False)
    assert len(result.history) == 2


class CountingTeacher(nn.Module):
    """Counts the samples it is shown, so a test can tell a teacher run once from one run every batch."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.samples_seen = net, 0

    def forward(self, inputs):
        self.samples_seen += inputs.shape[0]
        return self.net(inputs.flatten(1))


def test_array_dataset_meets_the_teacher_once_and_trains_the_same_student():
    train, _ = distillery.load_dataset("digits")
    students = {}
    for once in (True, False):
        net, student = teacher_and_student()
        teacher = CountingTeacher(net)
        student = nn.Sequential(nn.Flatten(), student)
        distillery.distill(teacher, student, train, epochs=3, batch_size=64, progress=False, teacher_once=once)
        expected = len(train) if once else 3 * len(train)
        assert teacher.samples_seen == expected
        students[once] = torch.cat([p.detach().flatten() for p in student.parameters()])
    # The teacher's logits come from batches of another size, so only rounding may differ.
    torch.testing.assert_close(students[True], students[False], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("augmentation, passes", [(Augmentation(), 1), (Augmentation(flip=True), 3)],
                         ids=["augmentation off", "flips"])
def test_batches_meet_the_teacher_once_only_when_their_augmentation_is_off(augmentation, passes):
    train, _ = distillery.load_dataset("digits")
    net, student = teacher_and_student()
    teacher = CountingTeacher(net)
    batches = distillery.BatchIterator(train, 64, shuffle=True, augmentation=augmentation)
    distillery.distill(teacher, nn.Sequential(nn.Flatten(), student), batches, epochs=3, progress=False)
    assert teacher.samples_seen == passes * len(train)
