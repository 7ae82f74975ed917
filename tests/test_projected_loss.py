"""The vocabulary projected a chunk of positions at a time: the same loss and gradients as logits made whole, for a
bare head and for token distillation (live teacher, cached top-k targets, the cross-entropy term), and a fallback
for models that cannot be split."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from language_models import TEXT, VOCABULARY, tiny_config
from torch import nn

from distillery.data.text import load_text_blocks, prompt_completion_blocks
from distillery.data.token_batches import TokenBatches
from distillery.losses.projected import projected_loss
from distillery.losses.tokens import forward_kl_with_gradient, token_divergence
from distillery.losses.topk import teacher_top_k, top_k_divergence, top_k_forward_kl_with_gradient
from distillery.methods import create_method
from distillery.models import build_model
from distillery.models.lm_head import split_causal_lm


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in module.named_parameters()
            if parameter.grad is not None}


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_a_chunked_projection_gives_the_whole_projections_loss_and_gradients(chunk_size, bias):
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, requires_grad=True)
    head = nn.Linear(8, 50, bias=bias)
    labels = torch.randint(0, 50, (13,))
    values, ids, tail = teacher_top_k(torch.randn(13, 50) * 3, 5)

    def loss_of(logits, rows):
        return (F.cross_entropy(logits, labels[rows], reduction="sum")
                + 2.0 * top_k_divergence(logits, values[rows], ids[rows], tail[rows]).sum()) / 13

    whole = loss_of(head(hidden), slice(None))
    whole.backward()
    expected = {"hidden": hidden.grad.clone(), **gradients(head)}
    hidden.grad = None
    head.zero_grad()
    chunked = projected_loss(hidden, head, loss_of, chunk_size)
    (3.0 * chunked).backward()  # the outer gradient scales what the chunks computed
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(hidden.grad, 3 * expected["hidden"], atol=1e-6)
    for name, grad in gradients(head).items():
        assert torch.allclose(grad, 3 * expected[name], atol=1e-6), name


@pytest.mark.parametrize("k", [1, 5, 50])
def test_the_written_out_top_k_gradient_is_autograds(k):
    torch.manual_seed(k)
    values, ids, tail = teacher_top_k(torch.randn(9, 50) * 4, k)
    logits = (torch.randn(9, 50) * 3).requires_grad_()
    expected = top_k_divergence(logits, values, ids, tail)
    (grad,) = torch.autograd.grad(expected.sum(), logits)
    loss, gradient = top_k_forward_kl_with_gradient(logits, values, ids, tail)
    assert torch.allclose(loss, expected.detach(), atol=1e-6)
    assert torch.allclose(gradient, grad, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_the_written_out_forward_kl_gradient_is_autograds(temperature):
    torch.manual_seed(1)
    teacher = torch.randn(9, 50) * 3
    logits = (torch.randn(9, 50) * 3).requires_grad_()
    expected = token_divergence(logits, teacher, kind="forward_kl", temperature=temperature)
    (grad,) = torch.autograd.grad(expected.sum(), logits)
    loss, gradient = forward_kl_with_gradient(logits, teacher, temperature)
    assert torch.allclose(loss, expected.detach(), atol=1e-5)
    assert torch.allclose(gradient, grad, atol=1e-6)


def test_a_chunk_size_below_one_is_refused():
    with pytest.raises(ValueError, match="chunk_size"):
        projected_loss(torch.zeros(2, 3), nn.Linear(3, 4), lambda logits, rows: logits.sum(), 0)


def token_kd_pair(family: str, **options):
    """The same student, teacher and options, projected in chunks and not; each method's student is its own copy."""
    torch.manual_seed(0)
    teacher = build_model({"name": "causal_lm", "config": tiny_config(family, layers=2)}, (16,), VOCABULARY).eval()
    student = build_model({"name": "causal_lm", "config": tiny_config(family, layers=1)}, (16,), VOCABULARY)
    copy = build_model({"name": "causal_lm", "config": tiny_config(family, layers=1)}, (16,), VOCABULARY)
    copy.load_state_dict(student.state_dict())
    return (create_method("token_kd", student, teacher, project_in_chunks=True, chunk_size=7, **options),
            create_method("token_kd", copy, teacher, project_in_chunks=False, **options))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("options", [{"divergence": "forward_kl"}, {"divergence": "jsd", "temperature": 2.0},
                                     {"divergence": "forward_kl", "temperature": 2.0, "alpha": 0.2},
                                     {"divergence": "reverse_kl", "alpha": 0.3}, {"top_k": 8},
                                     {"top_k": 8, "alpha": 0.3}, {"top_k": 8, "divergence": "reverse_kl"}])
def test_token_distillation_projected_in_chunks_equals_the_whole_logits(family, options, tokenizer):
    projected, whole = token_kd_pair(family, **options)
    blocks = prompt_completion_blocks([("Who made the earth?", " God made it."), ("Q", " A long answer"),
                                       ("And God said", " let there be light")], tokenizer, 16, "pairs")
    batch = next(iter(TokenBatches(blocks, 3)))
    first, second = projected.step(batch), whole.step(batch)
    assert first.logits is None and projected._student_split  # it did project
    assert first.loss.item() == pytest.approx(second.loss.item(), rel=1e-5, abs=1e-7)
    assert first.logs.keys() == second.logs.keys()
    for name in first.logs:
        assert float(first.logs[name]) == pytest.approx(float(second.logs[name]), rel=1e-5, abs=1e-7)
    first.loss.backward()
    second.loss.backward()
    expected = gradients(whole.student)
    for name, grad in gradients(projected.student).items():
        assert torch.allclose(grad, expected[name], atol=1e-6, rtol=1e-4), name
    assert not any(parameter.grad is not None for parameter in projected.teacher.parameters())


@pytest.mark.parametrize("options", [{"top_k": 8}, {"teacher_samples": 12, "temperature": 2.0, "alpha": 0.3}],
                         ids=["top_k", "samples"])
def test_cached_targets_projected_in_chunks_equal_the_whole_logits(options, tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    from distillery.teachers.token_targets import TargetSpec, teacher_targets

    projected, whole = token_kd_pair("llama", **options)
    blocks = load_text_blocks(TEXT, tokenizer, 16, cache=False).subset(torch.arange(6))
    spec = TargetSpec.top_k(8, "compact") if "top_k" in options else TargetSpec.samples(12, temperature=2.0)
    targets, _ = teacher_targets(projected.teacher, blocks, spec, progress=False)
    for method in (projected, whole):
        method.use_cached_targets(targets)
    batch = next(iter(TokenBatches(blocks, 6)))
    first, second = projected.step(batch), whole.step(batch)
    assert first.logits is None and second.logits is not None
    assert first.loss.item() == pytest.approx(second.loss.item(), rel=1e-5, abs=1e-7)
    first.loss.backward()
    second.loss.backward()
    expected = gradients(whole.student)
    for name, grad in gradients(projected.student).items():
        assert torch.allclose(grad, expected[name], atol=1e-6, rtol=1e-4), name


def test_live_sampled_targets_train_without_a_cache(tokenizer):
    projected, whole = token_kd_pair("gpt2", teacher_samples=4)
    blocks = prompt_completion_blocks([("Who made the earth?", " God made it.")], tokenizer, 16, "pairs")
    batch = next(iter(TokenBatches(blocks, 1)))
    for method in (projected, whole):
        loss = method.step(batch).loss
        assert torch.isfinite(loss) and loss.item() > 0


class Scaled(nn.Module):
    """A causal LM whose logits are its head's, doubled: splitting it would change what it predicts."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    @property
    def base_model(self):
        return self.model.base_model

    def forward(self, **inputs):
        output = self.model(**inputs)
        output.logits = output.logits * 2
        return output


def test_a_model_whose_logits_are_not_its_heads_projection_is_not_split(tokenizer):
    model = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=1)}, (16,), VOCABULARY)
    inputs = {"input_ids": torch.randint(0, VOCABULARY, (2, 8))}
    assert split_causal_lm(model, inputs) is not None
    assert split_causal_lm(Scaled(model), inputs) is None
    assert split_causal_lm(nn.Linear(3, 4), inputs) is None


def test_a_non_finite_loss_without_whole_logits_says_what_is_known():
    from distillery.engine.trainer import check_finite
    from distillery.errors import NumericalError
    from distillery.methods.base import StepOutput

    output = StepOutput(torch.tensor(float("nan")), None, {"kd": torch.tensor(float("nan"))})
    with pytest.raises(NumericalError, match="projected a chunk at a time and never held whole"):
        check_finite(output, epoch=1, step=3)
