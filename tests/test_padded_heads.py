"""One tokenizer, output layers padded to different sizes (Qwen-style): not a mismatch. The teacher and the student
are compared over the tokenizer's rows, the padding rows left out; a student head smaller than the tokenizer is
refused."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from language_models import lm_config, tiny_config
from transformers import AutoConfig, AutoModelForCausalLM

from distillery.data.batch import Batch
from distillery.errors import ModelError
from distillery.losses.tokens import token_loss
from distillery.methods import create_method

TOKENS = 300  # the tests' tokenizer


def causal_lm(vocabulary: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**tiny_config("llama", 1, 16, vocabulary)))


def test_the_loss_compares_the_tokenizers_rows_and_leaves_the_padding_out():
    teacher, student = causal_lm(320, 0), causal_lm(304, 1)
    ids = torch.randint(0, TOKENS, (2, 9), generator=torch.Generator().manual_seed(0))
    batch = Batch({"input_ids": ids[:, :-1]}, ids[:, 1:], torch.ones(2, 8, dtype=torch.bool))
    method = create_method("token_kd", student, teacher, alpha=0.0)
    with pytest.raises(ModelError, match="the teacher predicts 320 tokens and the student 304"):
        method.step(batch)
    method.use_shared_rows(TOKENS)
    loss = method.step(batch).loss
    with torch.no_grad():
        expected = token_loss(student(input_ids=ids[:, :-1]).logits[..., :TOKENS],
                              teacher(input_ids=ids[:, :-1]).logits[..., :TOKENS], batch.mask)
    torch.testing.assert_close(loss.detach(), expected)
    # Not the same as comparing the first 304 rows: the four padding rows the student has would count.
    with torch.no_grad():
        padded = token_loss(student(input_ids=ids[:, :-1]).logits, teacher(input_ids=ids[:, :-1]).logits[..., :304],
                            batch.mask)
    assert not torch.isclose(padded, expected)


@pytest.fixture(scope="module")
def padded_teacher(tmp_path_factory, tokenizer_dir):
    """A Llama-style teacher whose output layer has 320 rows for the 300-token tokenizer beside it."""
    folder = tmp_path_factory.mktemp("padded")
    model = causal_lm(320, 0)
    model.save_pretrained(str(folder), safe_serialization=True)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder)
    return folder


def run_config(tmp_path, teacher, vocabulary: int):
    document = lm_config(tmp_path / "run", distill={"teacher": {"huggingface": str(teacher)}, "method": "token_kd"})
    document["model"]["config"]["vocab_size"] = vocabulary
    document["train"]["epochs"] = 1
    return write_yaml(tmp_path / "run.yaml", document)


def test_a_student_padded_to_its_own_size_distils_from_a_teacher_padded_to_another(tmp_path, padded_teacher):
    result = invoke("distill", run_config(tmp_path, padded_teacher, 304))
    assert_ok(result)
    assert "the teacher's output layer has 320 rows and the student's 304, for one tokenizer of 300 tokens" \
        in result.stderr
    generated = invoke("generate", tmp_path / "run", "--prompt", "In the beginning", "--max-new-tokens", "3")
    assert_ok(generated)  # the student is rebuilt with its own 304 rows
    assert json.loads((tmp_path / "run" / "model.json").read_text())["num_classes"] == 304


def test_a_student_head_smaller_than_the_tokenizer_is_refused(tmp_path, padded_teacher):
    assert_user_error(invoke("distill", run_config(tmp_path, padded_teacher, 200)),
                      "the student's vocab_size (200) has fewer rows than the tokenizer's 300 tokens")


def test_top_k_targets_over_padded_heads_are_taken_live_and_a_store_of_them_is_refused(tmp_path, padded_teacher,
                                                                                      monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    stored = run_config(tmp_path, padded_teacher, 304)
    document = yaml.safe_load(stored.read_text())
    document["distill"]["top_k"] = 8
    assert_user_error(invoke("distill", write_yaml(stored, document)), "stored teacher targets",
                      "distill.teacher_cache: off")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache" / "top_k").exists()  # refused before building
    document["distill"]["teacher_cache"] = "off"
    assert_ok(invoke("distill", write_yaml(stored, document)))
