"""Text classification through the language pipeline: labelled texts, transformer sequence classifiers (encoder
or decoder) distilled with the logit methods and evaluated like any classifier."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from language_models import TEXT, tiny_config

from distillery.data.batch import Batch
from distillery.methods import create_method
from distillery.models import build_model


def labelled_verses(folder: Path) -> tuple[Path, Path]:
    """Genesis 1-11 verses labelled by whether they name God: every fourth verse held out for testing."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": line, "label": "names God" if "God" in line else "other"}
            for line in TEXT.read_text().splitlines() if line.strip()]
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for index, row in enumerate(rows) if index % 4))
    test.write_text("".join(json.dumps(row) + "\n" for index, row in enumerate(rows) if not index % 4))
    return train, test


def classifier_config(output_dir: Path, train: Path, test: Path, tokenizer_dir: Path, layers: int,
                      family: str = "llama", **sections) -> dict:
    document = {"output_dir": str(output_dir), "measure_latency": False, "progress": False,
                "data": {"dataset": "text_classification", "path": str(train), "test_path": str(test),
                         "tokenizer": str(tokenizer_dir), "block_length": 48},
                "model": {"name": "sequence_classifier", "config": tiny_config(family, layers=layers, width=48)},
                "train": {"epochs": 6, "batch_size": 32, "lr": 3e-3}}
    document.update(sections)
    return document


@pytest.mark.parametrize("method", ["hinton", "dkd", "dist"])
def test_a_text_classifier_is_distilled_with_the_logit_methods(tmp_path, tokenizer_dir, method):
    train, test = labelled_verses(tmp_path / "verses")
    teacher_dir = tmp_path / "teacher"
    assert_ok(invoke("train", write_yaml(tmp_path / "teacher.yaml",
                                         classifier_config(teacher_dir, train, test, tokenizer_dir, 2))))
    taught = json.loads((teacher_dir / "evaluation.json").read_text())
    majority = max(taught["per_class"]["samples"]) / taught["samples"]
    assert taught["task"] == "text_classification" and taught["accuracy"] > majority + 0.05
    student_dir = tmp_path / "student"
    config = classifier_config(student_dir, train, test, tokenizer_dir, 1,
                               distill={"teacher": str(teacher_dir), "method": method, "init_from_teacher": True})
    config["data"].pop("tokenizer")  # the teacher's, from its run directory
    assert_ok(invoke("distill", write_yaml(tmp_path / "student.yaml", config)))
    evaluation = json.loads((student_dir / "evaluation.json").read_text())
    assert evaluation["teacher"]["accuracy"] == pytest.approx(taught["accuracy"])
    assert evaluation["accuracy"] > majority and 0 <= evaluation["agreement"] <= 1
    assert json.loads((student_dir / "model.json").read_text())["class_names"] == ["names God", "other"]


def test_a_gpt2_classifier_reads_its_padding_and_a_test_label_unknown_to_training_is_refused(tmp_path,
                                                                                             tokenizer_dir):
    train, test = labelled_verses(tmp_path / "verses")
    model = build_model({"name": "sequence_classifier", "config": tiny_config("gpt2")}, (48,), 2)
    assert model.config.pad_token_id == 0  # a decoder classifies from its last token that is not padding
    test.write_text(test.read_text() + json.dumps({"text": "Amen.", "label": "psalm"}) + "\n")
    assert_user_error(invoke("train", write_yaml(tmp_path / "run.yaml", classifier_config(
        tmp_path / "run", train, test, tokenizer_dir, 1, family="gpt2"))), "class 'psalm'", "data.class_names")


def test_a_classifier_config_without_vocabulary_or_padding_takes_them_from_the_tokenizer(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    train, test = labelled_verses(tmp_path / "verses")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    bare = {key: value for key, value in tiny_config("llama", layers=1, width=32).items()
            if key not in ("vocab_size", "bos_token_id", "eos_token_id")}
    config = classifier_config(tmp_path / "run", train, test, tokenizer_dir, 1)
    config["model"]["config"], config["train"]["epochs"] = bare, 1
    assert_ok(invoke("train", write_yaml(tmp_path / "run.yaml", config)))
    built = json.loads((tmp_path / "run" / "model.json").read_text())["architecture"]["config"]
    assert built["pad_token_id"] == tokenizer.pad_token_id and built["vocab_size"] == len(tokenizer)

    config["output_dir"] = str(tmp_path / "padded")
    config["model"]["config"] = {**bare, "pad_token_id": tokenizer.pad_token_id + 1}
    assert_user_error(invoke("train", write_yaml(tmp_path / "padded.yaml", config)), "pad_token_id",
                      f"({tokenizer.pad_token_id})")
    config["model"]["config"] = {**bare, "vocab_size": 10}
    assert_user_error(invoke("train", write_yaml(tmp_path / "small.yaml", config)), "vocab_size is 10")
    assert not (tmp_path / "padded").exists()


def test_the_logit_methods_add_hidden_state_matching_over_the_tokens_that_are_not_padding():
    torch.manual_seed(0)
    student = build_model({"name": "sequence_classifier", "config": tiny_config("llama", layers=1)}, (12,), 3)
    teacher = build_model({"name": "sequence_classifier", "config": tiny_config("llama", layers=2, width=48)}, (12,), 3)
    ids = torch.randint(1, 50, (4, 12))
    attention = torch.ones(4, 12, dtype=torch.long)
    attention[1, 7:], attention[3, 3:] = 0, 0
    ids[attention == 0] = 0
    batch = Batch({"input_ids": ids, "attention_mask": attention}, torch.tensor([0, 2, 1, 2]))
    method = create_method("hinton", student, teacher, temperature=2.0, alpha=0.3, hidden_weight=0.5,
                           hidden_map={1: 2}).train()
    output = method.step(batch)

    # Written out: Hinton's loss, and the projected student state against the teacher's over real tokens only.
    student_out = student(**batch.inputs, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(**batch.inputs, output_hidden_states=True)
    kd = F.kl_div(F.log_softmax(student_out.logits / 2, -1), F.softmax(teacher_out.logits / 2, -1),
                  reduction="batchmean") * 4
    ce = F.cross_entropy(student_out.logits, batch.labels)
    real = attention.bool()
    projected = method.hidden.projections[0](student_out.hidden_states[1])[real]
    hidden = ((projected - teacher_out.hidden_states[2][real]) ** 2).mean()
    assert torch.allclose(output.logs["hidden"], hidden, atol=1e-6)
    assert torch.allclose(output.loss, 0.7 * kd + 0.3 * ce + 0.5 * hidden, atol=1e-5)
    output.loss.backward()
    assert method.hidden.projections[0].weight.grad.abs().sum() > 0  # the projection learns with the student
    assert all(p.grad is None for p in teacher.parameters())
    for name in ("dkd", "dist"):
        assert "hidden" in create_method(name, student, teacher, hidden_weight=1.0).step(batch).logs
    assert "hidden" not in create_method("hinton", student, teacher).step(batch).logs

    cnn = build_model({"name": "mlp", "hidden": [8]}, (1, 4, 4), 3)
    with pytest.raises(Exception, match="Hugging Face transformers"):
        create_method("hinton", cnn, build_model({"name": "mlp", "hidden": [8]}, (1, 4, 4), 3), hidden_weight=1.0)
    with pytest.raises(Exception, match="teacher_cache: off"):
        method.use_precomputed_teacher_logits(torch.zeros(4, 3))


@pytest.mark.parametrize("distill, expected", [
    ({"method": "fitnet", "student_layer": "model.layers.0", "teacher_layer": "model.layers.1"}, "image feature maps"),
    ({"method": "attention", "student_layers": ["model.layers.0"], "teacher_layers": ["model.layers.1"]},
     "image feature maps"),
    ({"method": "token_kd"}, "next-token distributions of language models"),
])
def test_methods_that_do_not_fit_a_text_classifier_are_refused_in_one_line(tmp_path, tokenizer_dir, distill,
                                                                            expected):
    train, test = labelled_verses(tmp_path / "verses")
    config = classifier_config(tmp_path / "student", train, test, tokenizer_dir, 1,
                               distill={"teacher": str(tmp_path / "no-teacher-needed-to-refuse"), **distill})
    assert_user_error(invoke("distill", write_yaml(tmp_path / "run.yaml", config)), expected)
    assert not (tmp_path / "student").exists()
