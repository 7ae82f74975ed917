"""Numerical faults: a NaN or infinite loss stops training with the epoch, step and loss part named."""
import pytest
import torch
from cli_helpers import assert_user_error, invoke, run_config, write_yaml
from torch import nn

from distillery.app.steps.fit import fit_method
from distillery.errors import NumericalError
from distillery.methods.base import Method, StepOutput


class NaNAt(Method):
    """Cross-entropy, plus a 'kd' part that turns NaN at one step."""

    def __init__(self, student: nn.Module, bad_step: int) -> None:
        super().__init__(student)
        self.bad_step, self.steps, self.weights_before = bad_step, 0, None

    def step(self, batch) -> StepOutput:
        self.steps += 1
        logits = self.student(batch.inputs)
        ce = nn.functional.cross_entropy(logits, batch.labels)
        kd = torch.tensor(float("nan") if self.steps == self.bad_step else 0.0)
        if self.steps == self.bad_step:
            self.weights_before = self.student.weight.detach().clone()
        return StepOutput(loss=ce + kd, logits=logits, logs={"ce": ce.detach(), "kd": kd})


def batches(count=5):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator))
            for _ in range(count)]


def test_nan_loss_names_epoch_step_and_part_and_leaves_the_weights_alone():
    method = NaNAt(nn.Linear(4, 3), bad_step=8)   # 5 steps per epoch: epoch 2, step 3
    # The student's outputs are finite: the part that failed is named, not the learning rate.
    with pytest.raises(NumericalError, match=r"epoch 2, step 3 \(non-finite: kd nan\).*loss part kd failed"):
        fit_method(method, batches(), epochs=3, progress=False)
    assert torch.equal(method.student.weight, method.weights_before)


def test_gradient_clipping_caps_the_update():
    torch.manual_seed(0)
    updates = {}
    for clip in (None, 0.01):
        model = nn.Linear(4, 3)
        with torch.no_grad():
            model.weight.mul_(100)   # a large loss, so the unclipped gradient is large
        before = [p.detach().clone() for p in model.parameters()]
        fit_method(NaNAt(model, bad_step=-1), batches(1), epochs=1, optimizer="sgd", lr=1.0, momentum=0.0,
                   weight_decay=0.0, schedule="constant", progress=False, grad_clip=clip)
        updates[clip] = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert updates[None] > 0.1 and updates[0.01] == pytest.approx(0.01, rel=1e-4)


def test_a_run_that_turns_nan_stops_with_one_line_and_keeps_its_last_good_epoch(tmp_path):
    # 14 training batches per epoch on digits at batch 100: the model turns NaN in its second epoch.
    output_dir = tmp_path / "run"
    config = write_yaml(tmp_path / "nan.yaml", run_config(
        output_dir, model={"name": "nan_model:make", "healthy_calls": 20},
        train={"epochs": 3, "batch_size": 100, "lr": 0.01}))
    assert_user_error(invoke("train", config), "epoch 2, step", "lower train.lr")
    assert (output_dir / "last.safetensors").is_file() and not (output_dir / "model.safetensors").exists()
    assert len((output_dir / "metrics.jsonl").read_text().splitlines()) == 1
