"""What a language-model student learns from besides the live teacher's full distribution: the teacher's top-k
targets cached offline, the student's own continuations scored by the teacher (GKD), and hidden states."""
from __future__ import annotations

import json

import pytest
import torch
from language_models import TEXT, VOCABULARY, lm_config, tiny_config

from distillery.data.text import load_text_blocks, prompt_completion_blocks
from distillery.data.token_batches import TokenBatches
from distillery.losses.tokens import token_loss
from distillery.methods import create_method
from distillery.models import build_model

# ---------------------------------------------------------------- offline top-k teacher targets


def llama_pair_on_text(tokenizer):
    """A 2-block teacher and a 1-block student (eval mode), 12 blocks of 16 tokens and one batch of them."""
    torch.manual_seed(0)
    teacher = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=2)}, (16,), VOCABULARY).eval()
    student = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=1)}, (16,), VOCABULARY).eval()
    blocks = load_text_blocks(TEXT, tokenizer, 16, cache=False).subset(torch.arange(12))
    return teacher, student, blocks, next(iter(TokenBatches(blocks, 12)))


def test_cached_top_k_targets_equal_the_full_loss_at_k_equal_vocabulary_and_bound_it_below(tmp_path, tokenizer,
                                                                                          monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    from distillery.teachers.token_targets import TargetSpec, teacher_targets

    teacher, student, blocks, batch = llama_pair_on_text(tokenizer)
    full = create_method("token_kd", student, teacher).eval().step(batch).loss
    losses = {}
    for k in (1, 8, 64, VOCABULARY):
        targets, built = teacher_targets(teacher, blocks, TargetSpec.top_k(k), batch_size=5, progress=False)
        assert built and targets.bytes_per_token == k * 6 + 4
        method = create_method("token_kd", student, teacher, top_k=k).eval()
        method.use_cached_targets(targets)
        losses[k] = method.step(batch).loss.item()
        live = create_method("token_kd", student, teacher, top_k=k).eval().step(batch).loss.item()
        assert losses[k] == pytest.approx(live, rel=1e-5, abs=1e-7)  # the cache holds what the live teacher gives
    assert losses[VOCABULARY] == pytest.approx(full.item(), rel=1e-4)
    assert losses[1] <= losses[8] <= losses[64] <= losses[VOCABULARY] * (1 + 1e-5)
    again, built = teacher_targets(teacher, blocks, TargetSpec.top_k(8), progress=False)
    assert not built
    assert again.directory == teacher_targets(teacher, blocks, TargetSpec.top_k(8), progress=False)[0].directory
    with torch.no_grad():
        teacher.model.norm.weight.mul_(2)  # another teacher: another cache
    assert teacher_targets(teacher, blocks, TargetSpec.top_k(8), progress=False)[1]


def test_smaller_storage_is_its_own_cache_and_gives_nearly_the_same_loss(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    from distillery.teachers.token_targets import TargetSpec, teacher_targets

    teacher, student, blocks, batch = llama_pair_on_text(tokenizer)
    losses, folders = {}, set()
    for storage, size in (("float32", 388), ("float16", 258), ("compact", 146)):
        targets, built = teacher_targets(teacher, blocks, TargetSpec.top_k(64, storage), progress=False)
        assert built and targets.bytes_per_token == size and targets.spec.storage == storage
        folders.add(targets.directory)
        method = create_method("token_kd", student, teacher, top_k=64).eval()
        method.use_cached_targets(targets)
        losses[storage] = method.step(batch).loss.item()
    assert len(folders) == 3
    assert losses["float16"] == pytest.approx(losses["float32"], rel=1e-3)
    assert losses["compact"] == pytest.approx(losses["float32"], abs=5e-3)
    with pytest.raises(ValueError, match="unknown storage"):
        teacher_targets(teacher, blocks, TargetSpec.top_k(64, "int4"), progress=False)


def test_an_unknown_storage_in_a_config_is_one_line(tmp_path):
    from cli_helpers import assert_user_error, invoke, write_yaml

    document = lm_config(tmp_path / "run", distill={"teacher": "x", "method": "token_kd", "top_k": 8,
                                                     "top_k_storage": "int4"})
    result = assert_user_error(invoke("distill", write_yaml(tmp_path / "bad.yaml", document)), "top_k_storage")
    assert "float32" in result and "compact" in result
    assert not (tmp_path / "run").exists()


def test_top_k_with_a_temperature_is_refused():
    model = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=1)}, (16,), VOCABULARY)
    with pytest.raises(Exception, match="at T = 1"):
        create_method("token_kd", model, model, top_k=8, temperature=2.0)


def test_a_run_with_top_k_builds_the_cache_once_and_says_its_size(tmp_path, pretrained_teacher, capsys,
                                                                  monkeypatch):
    from distillery.app.config.files import build_config
    from distillery.app.tasks import text_task
    from distillery.app.workflows.run import run

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))  # its own: another test's store would be reused

    def distil(name):
        document = lm_config(tmp_path / name, progress=True,
                             model={"name": "causal_lm", "base": str(pretrained_teacher), "num_hidden_layers": 1},
                             distill={"teacher": {"huggingface": str(pretrained_teacher)}, "method": "token_kd",
                                      "top_k": 16})
        document["train"]["epochs"] = 1
        return run(build_config(document))
    first = json.loads((distil("first") / "evaluation.json").read_text())
    assert "top-16 teacher targets (float32): 100 bytes a token (1,200 for the whole distribution)" in \
        capsys.readouterr().err
    assert first["agreement"] > 0
    # Every target cached: the second run never loads the teacher, and reads its test scores from the cache.
    monkeypatch.setattr(text_task, "load_language_teacher", lambda *args, **kwargs: pytest.fail("teacher loaded"))
    evaluation = json.loads((distil("second") / "evaluation.json").read_text())
    assert "reused from" in capsys.readouterr().err
    assert evaluation["perplexity"] > 1 and "agreement" not in evaluation
    assert evaluation["teacher"]["perplexity"] == first["teacher"]["perplexity"]
    assert "not loaded" in evaluation["teacher_note"] and "skipped" in evaluation["teacher_note"]
    model_json = json.loads((tmp_path / "second" / "model.json").read_text())
    assert model_json["teacher_targets"]["teacher_loaded"] is False


# ---------------------------------------------------------------- on-policy batches (GKD), hidden states


def test_student_continuations_keep_the_prompt_and_are_the_students_greedy_text(tokenizer):
    from distillery.methods.on_policy import student_continuations

    torch.manual_seed(0)
    student = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=1)}, (24,), VOCABULARY).eval()
    blocks = prompt_completion_blocks([("Who made", " the earth"), ("And God said unto", " them")], tokenizer, 24,
                                      "pairs")
    batch = next(iter(TokenBatches(blocks, 2)))
    own = student_continuations(student, batch, prompt_tokens=4, max_new_tokens=5, temperature=0.0)
    assert own.labels is None
    for row, (prompt, _) in enumerate([("Who made", ""), ("And God said unto", "")]):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert own.inputs["input_ids"][row, : len(ids)].tolist() == ids
        expected = student.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, use_cache=True,
                                    pad_token_id=0)[0, len(ids):]
        assert own.inputs["input_ids"][row, len(ids): len(ids) + 5].tolist() == expected.tolist()
        # Predictions of the 5 sampled tokens count, nothing else.
        assert own.mask[row].nonzero().flatten().tolist() == list(range(len(ids) - 1, len(ids) + 4))


def test_packed_text_keeps_its_first_prompt_tokens(tokenizer):
    from distillery.methods.on_policy import student_continuations

    student = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=1)}, (16,), VOCABULARY).eval()
    batch = next(iter(TokenBatches(load_text_blocks(TEXT, tokenizer, 16, cache=False), 3)))
    torch.manual_seed(5)
    own = student_continuations(student, batch, prompt_tokens=6, max_new_tokens=None, temperature=1.0)
    assert torch.equal(own.inputs["input_ids"][:, :6], batch.inputs["input_ids"][:, :6])
    assert own.mask[:, 5:15].all() and not own.mask[:, :5].any() and not own.mask[:, 15].any()


def test_on_policy_steps_score_the_students_text_and_skip_the_label_term(tokenizer):
    from distillery.methods.on_policy import student_continuations

    torch.manual_seed(0)
    student = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=1)}, (16,), VOCABULARY)
    teacher = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=2)}, (16,), VOCABULARY)
    batch = next(iter(TokenBatches(load_text_blocks(TEXT, tokenizer, 16, cache=False), 4)))
    method = create_method("token_kd", student, teacher, on_policy=1.0, alpha=0.5, sample_temperature=0.0,
                           prompt_tokens=8)
    output = method.train().step(batch)  # the tiny GPT-2 has no dropout: train mode computes what eval mode does
    own = student_continuations(student, batch, prompt_tokens=8, max_new_tokens=None, temperature=0.0)
    expected = token_loss(student(**own.inputs).logits, teacher(**own.inputs).logits, own.mask)
    assert torch.allclose(output.loss, 0.5 * expected, atol=1e-6) and "ce" not in output.logs


def test_hidden_states_are_matched_through_projections(tokenizer):
    from distillery.methods.hidden_states import even_hidden_map

    assert even_hidden_map(3, 5) == {1: 1, 2: 3, 3: 5} and even_hidden_map(6, 30)[6] == 30
    torch.manual_seed(0)
    teacher = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=3, width=48)}, (16,), VOCABULARY)
    student = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=1, width=32)}, (16,), VOCABULARY)
    method = create_method("token_kd", student, teacher, hidden_weight=2.0, hidden_map={1: 2}).eval()
    batch = next(iter(TokenBatches(load_text_blocks(TEXT, tokenizer, 16, cache=False), 2)))
    output = method.step(batch)
    projection = method.hidden.projections[0]
    states = student(**batch.inputs, output_hidden_states=True).hidden_states[1]
    target = teacher(**batch.inputs, output_hidden_states=True).hidden_states[2]
    hidden = ((projection(states) - target) ** 2).mean()
    assert torch.allclose(output.logs["hidden"], hidden, atol=1e-6)
    assert torch.allclose(output.loss, output.logs["kd"] + 2.0 * hidden, atol=1e-5)
    assert projection.weight in set(method.trainable_parameters())
    with pytest.raises(Exception, match="hidden state the models do not have"):
        create_method("token_kd", student, teacher, hidden_weight=1.0, hidden_map={2: 1})
