"""Text classification through the language pipeline: labelled texts, transformer sequence classifiers (encoder
or decoder) distilled with the logit methods and evaluated like any classifier."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from language_models import TEXT, tiny_config, train_tokenizer

from distillery.models import build_model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


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
