"""The GPU-ready options that run on any device: bfloat16 autocast and torch.compile."""
import pytest
import torch
from torch import nn

from distillery.app.workflows.api import train
from distillery.app.config import DataConfig
from distillery.app.config.files import build_config
from distillery.app.steps.prepared_data import prepare_data
from distillery.app.steps.evaluation import evaluate
from distillery.app.steps.fit import fit_method
from distillery.data import BatchIterator
from distillery.engine import autocast
from distillery.errors import ConfigError
from distillery.methods import create_method
from distillery.methods.base import StepOutput
from distillery.methods.supervised import Supervised


class RecordsAutocast(Supervised):
    """A supervised step that notes the dtype its student's logits come out in."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__(student)
        self.logit_dtypes: list[torch.dtype] = []

    def step(self, batch) -> StepOutput:
        output = super().step(batch)
        self.logit_dtypes.append(output.logits.dtype)
        return output


@pytest.fixture(scope="module")
def digits():
    return prepare_data(DataConfig(dataset="digits", val_fraction=0.15))


def batches(data):
    return BatchIterator(data.train, 64, shuffle=True, seed=0, transform=data.normalizer)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_steps_run_under_the_chosen_precision(digits, precision, dtype):
    method = RecordsAutocast(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    fit_method(method, batches(digits), epochs=1, progress=False, precision=precision)
    assert set(method.logit_dtypes) == {dtype}
    assert method.student[1].weight.dtype == torch.float32   # autocast casts ops, never the stored weights


def test_bf16_training_learns_like_fp32(digits):
    accuracies = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        train(model, batches(digits), epochs=5, lr=0.01, progress=False, precision=precision)
        accuracies[precision] = evaluate(model, BatchIterator(digits.test, 512))["accuracy"]
    assert accuracies["bf16"] > 0.85 and abs(accuracies["bf16"] - accuracies["fp32"]) < 0.05, accuracies


def test_compiled_student_trains_and_saves_the_same_keys(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    keys = list(model.state_dict())
    result = train(model, batches(digits), epochs=2, lr=0.01, progress=False, compile=True)
    assert getattr(model, "_compiled_call_impl", None) is not None      # nn.Module.compile ran
    assert list(result.model.state_dict()) == keys
    assert evaluate(result.model, BatchIterator(digits.test, 512))["accuracy"] > 0.8


def test_bad_precision_and_compile_with_hooks_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        autocast(torch.device("cpu"), "fp8")
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    method = create_method("fitnet", student, teacher, student_layer="1", teacher_layer="1", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="train.compile cannot be combined with method .fitnet."):
        fit_method(method, [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))], epochs=1, progress=False,
                   compile=True)
    with pytest.raises(ConfigError, match="train.precision"):
        build_config({"output_dir": "x", "train": {"precision": "fp16"}})
