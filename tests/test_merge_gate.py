"""Calibrating a merge of teachers of different class sets with a gate fitted on ten labels per class."""
import pytest
import torch

import distillery
from distillery.data import Normalizer, load_dataset, select_classes
from distillery.errors import ConfigError
from distillery.teachers.label_space import LabelSpaceMerge
from distillery.teachers.merge_gate import MergeGate, fit_gate

DIGITS = [str(digit) for digit in range(10)]


@pytest.fixture(scope="module")
def halves():
    """Two digits teachers trained on even and odd digits, the data normalised, the test split."""
    train, test = load_dataset("digits")
    normalizer = Normalizer.fit(train)
    train, test = normalizer.apply(train), normalizer.apply(test)
    sets = [DIGITS[0::2], DIGITS[1::2]]
    teachers = []
    for own in sets:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
        teachers.append(distillery.train(model, select_classes(train, own), epochs=15, lr=0.01, progress=False,
                                         device="cpu", batch_size=64).model.eval())
    return teachers, sets, train, test


def accuracy(teacher, test):
    with torch.no_grad():
        return (teacher(test.inputs).argmax(1) == test.labels).float().mean().item()


class Rescaled(torch.nn.Module):
    """A teacher whose logits are on another scale and offset, as independently trained teachers' can be."""

    def __init__(self, teacher, scale, offset):
        super().__init__()
        self.teacher, self.scale, self.offset = teacher, scale, offset

    def forward(self, inputs):
        return self.scale * self.teacher(inputs) + self.offset


def test_a_gate_on_ten_labels_per_class_beats_the_plain_logit_union(halves):
    teachers, sets, train, test = halves
    merge = LabelSpaceMerge([teachers[0], Rescaled(teachers[1], 4.0, 3.0)], sets, DIGITS)
    plain = accuracy(merge, test)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator)
    chosen = torch.cat([order[train.labels[order] == label][:10] for label in range(10)])
    merge.calibrate(train.inputs[chosen], train.labels[chosen])
    calibrated = accuracy(merge, test)
    assert calibrated > plain + 0.1 and calibrated > 0.85, (plain, calibrated)
    with torch.no_grad():
        log_probs = merge(test.inputs[:16])
    # The calibrated merge gives log-probabilities: a mixture of the teachers' distributions.
    torch.testing.assert_close(torch.logsumexp(log_probs, dim=-1), torch.zeros(16), atol=1e-5, rtol=0)


def test_the_gate_maximises_the_merged_likelihood_of_the_true_class():
    # Two teachers; the first feature separates which one knows the label: the gate must learn to follow it.
    features = torch.tensor([[3.0, 0, 0, -3.0, 0, 0], [-3.0, 0, 0, 3.0, 0, 0]] * 20)
    knows = torch.tensor([[True, False], [False, True]] * 20)
    class_log_probs = torch.zeros(40, 2)
    gate = MergeGate(6, 2)
    nll = fit_gate(gate, features, knows, class_log_probs)
    assert nll < 0.1  # untrained (uniform), it would be log 2 = 0.69
    with pytest.raises(ConfigError):
        fit_gate(MergeGate(6, 2), features[:0], knows[:0], class_log_probs[:0])


def test_calibrate_merge_from_the_config_needs_teachers_of_different_classes(tmp_path, teacher_run):
    from cli_helpers import assert_user_error, invoke, run_config, write_yaml

    config = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path / "student", distill={"teacher": str(teacher_run), "calibrate_merge": 10}))
    assert_user_error(invoke("distill", str(config)), "calibrate_merge calibrates teachers of different class sets")


class Functional(torch.nn.Module):
    """A teacher without a linear layer (as an ONNX teacher is to PyTorch): its logits from a plain matrix."""

    def __init__(self, teacher):
        super().__init__()
        layers = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
        self.weights = [(layer.weight.detach(), layer.bias.detach()) for layer in layers]

    def forward(self, inputs):
        hidden = inputs.flatten(1)
        for index, (weight, bias) in enumerate(self.weights):
            hidden = hidden @ weight.T + bias
            hidden = hidden.relu() if index < len(self.weights) - 1 else hidden
        return hidden


def test_the_gate_reads_each_teachers_representation_where_every_teacher_has_one(halves):
    teachers, sets, train, test = halves
    merge = LabelSpaceMerge(teachers, sets, DIGITS)
    logits, representations = merge.member_outputs(test.inputs[:4])
    with torch.no_grad():
        hidden = teachers[0][2](teachers[0][1](teachers[0][0](test.inputs[:4])))  # the input of the last Linear
    assert representations is not None and torch.equal(representations[0], hidden)
    assert torch.equal(logits[0], teachers[0](test.inputs[:4]))
    without = LabelSpaceMerge([teachers[0], Functional(teachers[1])], sets, DIGITS)
    assert without.member_outputs(test.inputs[:4])[1] is None
    chosen = torch.cat([torch.nonzero(train.labels == label)[:10, 0] for label in range(10)])
    for merged in (merge, without):
        merged.calibrate(train.inputs[chosen], train.labels[chosen])
        assert merged.gate.linear.in_features == (16 + 2 * 32 if merged is merge else 16)
        assert accuracy(merged, test) > 0.85
