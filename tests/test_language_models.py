"""Language models through the same engine: text into token blocks, Hugging Face causal LMs as teachers and
students, token-level distillation, perplexity, resume, generate, and the refusals (tokenizers, vocabularies)."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from language_models import TEXT, VOCABULARY, lm_config, save_pretrained_model, tiny_config, train_tokenizer

import distillery
from distillery.data.text import load_text_blocks, pack_documents, prompt_completion_blocks
from distillery.data.token_batches import IGNORED, TokenBatches
from distillery.eval.perplexity import language_model_metrics
from distillery.methods import TokenDistillation, create_method
from distillery.models import build_model, initialize_from_teacher
from distillery.models.text_transformers import every_kth_block_map

# ---------------------------------------------------------------- text into blocks


def test_packed_blocks_overlap_by_one_so_every_token_is_predicted_once(tokenizer):
    documents = ["In the beginning God created the heaven and the earth.\n", "And the earth was without form.\n"]
    stream = []
    for text in documents:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = pack_documents(documents, tokenizer, 5, "two lines")
    assert blocks.tokens.shape == ((len(stream) - 1) // 5, 6)
    for row in range(len(blocks)):
        assert blocks.tokens[row].tolist() == stream[row * 5: row * 5 + 6]
    assert blocks.counted.all() and blocks.attention is None


def test_prompt_completion_blocks_count_the_completion_only(tokenizer):
    pairs = [("Who made the earth?", " God made it."), ("Q", " A")]
    blocks = prompt_completion_blocks(pairs, tokenizer, 40, "pairs")
    prompt = tokenizer(pairs[0][0], add_special_tokens=False)["input_ids"]
    completion = tokenizer(pairs[0][1], add_special_tokens=False)["input_ids"]
    ids = prompt + completion + [tokenizer.eos_token_id]
    assert blocks.tokens[0, : len(ids)].tolist() == ids
    # Position p predicts token p + 1: counted exactly where the predicted token belongs to the completion (or end).
    assert len(ids) < 40
    expected = [len(prompt) <= p + 1 < len(ids) for p in range(40)]
    assert blocks.counted[0].tolist() == expected
    assert blocks.attention[0].tolist() == [p < len(ids) - 1 for p in range(40)]
    batch = next(iter(TokenBatches(blocks, 2)))
    assert batch.labels[0][~blocks.counted[0]].eq(IGNORED).all()
    assert batch.labels[0][blocks.counted[0]].tolist() == ids[len(prompt):]
    assert set(batch.inputs) == {"input_ids", "attention_mask"}


def test_a_prompt_that_fills_the_block_is_refused(tokenizer):
    with pytest.raises(Exception, match="raise data.block_length"):
        prompt_completion_blocks([("word " * 40, " end")], tokenizer, 8, "long.jsonl")


def test_blocks_are_cached_by_text_tokenizer_and_length(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    first = load_text_blocks(TEXT, tokenizer, 32)
    cached = list((tmp_path / "cache" / "tokens").iterdir())
    assert len(cached) == 1
    again = load_text_blocks(TEXT, tokenizer, 32)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.counted, again.counted)
    load_text_blocks(TEXT, tokenizer, 16)
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 2


def test_batches_repeat_per_seed_and_epoch(tokenizer):
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False)
    batches = TokenBatches(blocks, 8, shuffle=True, seed=3)
    batches.set_epoch(2)
    first = [batch.indices for batch in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, [batch.indices for batch in batches]))
    batches.set_epoch(3)
    assert not torch.equal(first[0], next(iter(batches)).indices)


# ---------------------------------------------------------------- models, metrics, the method


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_token_kd_step_is_the_divergence_over_counted_tokens(family, tokenizer):
    torch.manual_seed(0)
    student = build_model({"name": "causal_lm", "config": tiny_config(family, layers=1)}, (16,), VOCABULARY)
    teacher = build_model({"name": "causal_lm", "config": tiny_config(family, layers=2)}, (16,), VOCABULARY)
    method = create_method("token_kd", student, teacher, divergence="forward_kl", temperature=2.0, alpha=0.25)
    blocks = prompt_completion_blocks([("Who made the earth?", " God made it."), ("Q", " A long answer")],
                                      tokenizer, 16, "pairs")
    batch = next(iter(TokenBatches(blocks, 2)))
    output = method.step(batch)
    student_logits = student(**batch.inputs).logits.float()
    teacher_logits = teacher(**batch.inputs).logits.float()
    keep = batch.mask.reshape(-1)
    s, t = student_logits.reshape(-1, VOCABULARY)[keep], teacher_logits.reshape(-1, VOCABULARY)[keep]
    p = F.softmax(t / 2, -1)
    kl = (p * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    ce = F.cross_entropy(s, batch.labels.reshape(-1)[keep])
    assert torch.allclose(output.loss, 0.75 * kl + 0.25 * ce, atol=1e-5)
    assert not any(parameter.requires_grad for parameter in method.teacher.parameters())


def test_the_python_api_distils_a_language_model_on_token_batches(tokenizer):
    torch.manual_seed(0)
    student = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=1)}, (16,), VOCABULARY)
    teacher = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=2)}, (16,), VOCABULARY)
    blocks = load_text_blocks(TEXT, tokenizer, 16, cache=False).subset(torch.arange(32))
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    result = distillery.distill(teacher, student, TokenBatches(blocks, 8, shuffle=True), method="token_kd",
                                method_options={"divergence": "reverse_kl"}, epochs=2, lr=3e-3, progress=False)
    losses = [record["train/loss"] for record in result.history]
    assert losses[1] < losses[0]
    assert all(torch.equal(before[name], value) for name, value in teacher.state_dict().items())


def test_perplexity_is_exp_of_the_mean_cross_entropy_over_counted_tokens(tokenizer):
    torch.manual_seed(1)
    model = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=1)}, (16,), VOCABULARY)
    blocks = prompt_completion_blocks([("Who", " made the earth"), ("And God said", " let there be light")],
                                      tokenizer, 16, "pairs")
    metrics = language_model_metrics(model, TokenBatches(blocks, 1))
    losses, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in range(2):
            logits = model(input_ids=blocks.tokens[row: row + 1, :-1],
                           attention_mask=blocks.attention[row: row + 1].long()).logits[0]
            keep = blocks.counted[row]
            losses += F.cross_entropy(logits[keep], blocks.tokens[row, 1:][keep], reduction="sum").item()
            count += int(keep.sum())
    assert metrics["tokens"] == count
    assert metrics["perplexity"] == pytest.approx(math.exp(losses / count), rel=1e-5)


def test_a_student_starts_from_every_kth_teacher_block():
    teacher = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=5)}, (16,), VOCABULARY)
    student = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=3)}, (16,), VOCABULARY)
    layer_map = every_kth_block_map(student, teacher)
    assert layer_map == {"": "", "model.layers.0": "model.layers.0", "model.layers.1": "model.layers.2",
                         "model.layers.2": "model.layers.4"}
    report = initialize_from_teacher(student, teacher, layer_map)
    assert not report.missing and not report.shape_mismatch
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)


# ---------------------------------------------------------------- runs through the CLI


def test_train_then_distill_a_tiny_language_model_from_yaml(tmp_path, tokenizer_dir):
    teacher_dir = tmp_path / "teacher"
    teacher = lm_config(teacher_dir, data={"dataset": "text", "path": str(TEXT), "block_length": 32,
                                           "tokenizer": str(tokenizer_dir)},
                        model={"name": "causal_lm", "config": tiny_config("llama", layers=2, width=48)},
                        train={"epochs": 4, "batch_size": 16, "lr": 5e-3}, role="teacher")
    assert_ok(invoke("train", write_yaml(tmp_path / "teacher.yaml", teacher)))
    taught = json.loads((teacher_dir / "evaluation.json").read_text())
    assert taught["task"] == "language_model" and taught["perplexity"] < 0.5 * VOCABULARY

    student_dir = tmp_path / "student"
    student = lm_config(student_dir, model={"name": "causal_lm", "config": tiny_config("llama", layers=1, width=48)},
                        distill={"teacher": str(teacher_dir), "method": "token_kd", "divergence": "reverse_kl",
                                 "init_from_teacher": True})
    distilled = invoke("distill", write_yaml(tmp_path / "student.yaml", student))
    assert_ok(distilled)
    evaluation = json.loads((student_dir / "evaluation.json").read_text())
    # The result line speaks of perplexity, the teacher's beside the student's, not of next-token accuracy.
    assert distilled.stdout.strip() == (f"{student_dir}: test perplexity {evaluation['perplexity']:.2f} (teacher "
                                        f"{evaluation['teacher']['perplexity']:.2f}), "
                                        f"{evaluation['parameters']:,} parameters")
    assert evaluation["teacher"]["perplexity"] == pytest.approx(
        json.loads((teacher_dir / "evaluation.json").read_text())["perplexity"], rel=0.2)
    assert evaluation["perplexity"] < 0.5 * VOCABULARY
    model = json.loads((student_dir / "model.json").read_text())
    assert model["architecture"]["config"]["num_hidden_layers"] == 1
    result = invoke("generate", student_dir, "--prompt", "And God said", "--max-new-tokens", "5")
    assert_ok(result)
    assert result.stdout.count("And God said") == 2 and "teacher:" in result.stdout

    # The same student on the text alone, then the report of all three.
    alone = lm_config(tmp_path / "alone", data=teacher["data"],
                      model={"name": "causal_lm", "config": tiny_config("llama", layers=1, width=48)})
    assert_ok(invoke("train", write_yaml(tmp_path / "alone.yaml", alone)))
    assert_ok(invoke("report", teacher_dir, tmp_path / "alone", student_dir, "-o", tmp_path / "report"))
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| student | distilled |" in report and "student: against alone (the text alone), perplexity ×" in report
    assert "noise" in report and (tmp_path / "report" / "perplexity.png").read_bytes().startswith(b"\x89PNG")


RESUME_CASES = {
    "jsd": {"divergence": "jsd"},
    # On-policy batches draw the coin and the student's samples from the generator the state restores; the
    # corpus batches read cached top-k targets, the student's own text the live teacher's.
    "gkd-top-k-hidden": {"on_policy": 0.5, "top_k": 16, "sample_tokens": 8, "hidden_weight": 0.5},
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_language_model_distillation_resumes_bit_identical(tmp_path, pretrained_teacher, monkeypatch, case):
    sections = {"model": {"name": "causal_lm", "base": str(pretrained_teacher), "num_hidden_layers": 1},
                "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "checkpoint_every_steps": 2},
                "distill": {"teacher": {"huggingface": str(pretrained_teacher)}, "method": "token_kd",
                            "init_from_teacher": True, **RESUME_CASES[case]}}
    reference = tmp_path / "reference"
    assert_ok(invoke("distill", write_yaml(tmp_path / "reference.yaml", lm_config(reference, **sections))))
    interrupted = tmp_path / "interrupted"
    config = write_yaml(tmp_path / "interrupted.yaml", lm_config(interrupted, **sections))
    original, calls = TokenDistillation.step, []

    def interrupted_step(self, batch):  # SIGINT during the 8th training step: epoch 2 (of 6 steps), its second
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)
    monkeypatch.setattr(TokenDistillation, "step", interrupted_step)
    result = invoke("distill", config)
    assert result.exit_code == 130, result.stderr
    assert f"distillery distill --resume {interrupted}" in result.stderr
    monkeypatch.setattr(TokenDistillation, "step", original)
    assert_ok(invoke("distill", "--resume", interrupted))
    from test_resume import assert_same_run
    assert_same_run(interrupted, reference)


def test_another_tokenizer_than_the_teachers_is_refused_in_one_line(tmp_path, pretrained_teacher):
    other = train_tokenizer(tmp_path / "other", vocabulary=280)
    config = lm_config(tmp_path / "run", data={"dataset": "text", "path": str(TEXT), "tokenizer": str(other)},
                       model={"name": "causal_lm", "base": str(pretrained_teacher), "num_hidden_layers": 1},
                       distill={"teacher": {"huggingface": str(pretrained_teacher)}, "method": "token_kd"})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "run.yaml", config)),
                      "teacher's tokenizer", str(pretrained_teacher), str(other), "280 tokens")
    assert not (tmp_path / "run").exists()


def test_a_student_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path, pretrained_teacher):
    """A larger one is a padded head (tests/test_padded_heads.py); a smaller one has no row for some tokens."""
    config = lm_config(tmp_path / "run", model={"name": "causal_lm", "config": tiny_config("gpt2", vocabulary=200)},
                       distill={"teacher": {"huggingface": str(pretrained_teacher)}, "method": "token_kd"})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "run.yaml", config)), "vocab_size (200)", "300 tokens")


def test_image_options_on_text_data_are_refused(tmp_path, tokenizer_dir):
    config = lm_config(tmp_path / "run", data={"dataset": "text", "path": str(TEXT), "tokenizer": str(tokenizer_dir),
                                               "image_size": 28})
    assert_user_error(invoke("train", write_yaml(tmp_path / "run.yaml", config)), "data.image_size", "not text")


def test_a_teacher_folder_without_a_tokenizer_is_named(tmp_path):
    folder = save_pretrained_model(tmp_path / "bare", "gpt2")
    config = lm_config(tmp_path / "run", distill={"teacher": {"huggingface": str(folder)}, "method": "token_kd"})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "run.yaml", config)), str(folder), "no tokenizer")


def test_the_tiny_language_model_examples_run_as_the_readme_says(tmp_path, monkeypatch):
    import subprocess
    import sys

    from distillery.app.config.files import load_config
    from distillery.app.workflows.run import run

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, str(root / "examples" / "make_tiny_lm.py")], check=True, capture_output=True)
    short = ["train.epochs=2", "progress=false", f"data.path={TEXT}"]
    teacher = run(load_config(root / "configs" / "tiny_lm_teacher.yaml", short))
    student = run(load_config(root / "configs" / "tiny_lm_distill.yaml", [*short, f"distill.teacher={teacher}"]))
    assert json.loads((student / "evaluation.json").read_text())["perplexity"] < 512


def test_image_settings_and_commands_are_refused_for_text_runs_in_one_line(tmp_path, pretrained_teacher):
    base = {"model": {"name": "causal_lm", "base": str(pretrained_teacher), "num_hidden_layers": 1},
            "distill": {"teacher": {"huggingface": str(pretrained_teacher)}, "method": "token_kd"}}
    config = lm_config(tmp_path / "run", **base, transfer={"labels": False})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "transfer.yaml", config)), "transfer:", "remove it")
    config = lm_config(tmp_path / "run", **{**base, "distill": {**base["distill"], "calibrate_merge": 10}})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "merge.yaml", config)), "distill.calibrate_merge")
    config = write_yaml(tmp_path / "ok.yaml", lm_config(tmp_path / "run", **base))
    assert_user_error(invoke("cache", config), "distill.top_k")
    assert not (tmp_path / "run").exists()
    assert_ok(invoke("distill", config))
    for command in ("evaluate", "quantize"):
        assert_user_error(invoke(command, tmp_path / "run"), "language model run", "distillery report")


def test_next_token_calibration_error_summed_over_batches_is_the_ece_of_all_counted_positions():
    from distillery.eval.metrics import expected_calibration_error
    from distillery.eval.perplexity import _Scores

    torch.manual_seed(0)
    logits, labels = torch.randn(3, 10, 20) * 3, torch.randint(0, 20, (3, 10))
    keep = torch.rand(3, 10) > 0.3
    scores = _Scores()
    scores.add(logits[:2], labels[:2], keep[:2])
    scores.add(logits[2:], labels[2:], keep[2:])
    # The independent reference: the classifier ECE (float64 softmax) over the counted positions at once.
    assert scores.metrics()["ece"] == pytest.approx(expected_calibration_error(logits[keep], labels[keep]), abs=1e-6)
