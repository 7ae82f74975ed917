"""A teacher's tokenizer that differs from the data's in its files but not in what it makes of the text is accepted;
a real difference is refused in one line naming the first text the two encode differently."""
from __future__ import annotations

from pathlib import Path

from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from language_models import lm_config, train_tokenizer

from distillery.data.tokenizer import first_encoding_difference, load_tokenizer, same_tokenizer


def with_unused_special_token(source: Path, folder: Path) -> Path:
    """The tokenizer at ``source`` with one more special token, which the shipped text never holds."""
    tokenizer = load_tokenizer(source)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool_call|>"]})
    tokenizer.save_pretrained(str(folder))
    return folder


def distill_config(tmp_path: Path, teacher: Path, tokenizer: Path) -> Path:
    document = lm_config(tmp_path / "run", distill={"teacher": {"huggingface": str(teacher)}, "method": "token_kd"})
    document["data"]["tokenizer"] = str(tokenizer)
    document["train"]["epochs"] = 1
    return write_yaml(tmp_path / "run.yaml", document)


def test_two_tokenizers_that_encode_the_text_alike_are_one_tokenizer(tmp_path, pretrained_teacher, tokenizer_dir):
    grown = with_unused_special_token(tokenizer_dir, tmp_path / "grown")
    first, second = load_tokenizer(tokenizer_dir), load_tokenizer(grown)
    assert not same_tokenizer(first, second) and len(second) == len(first) + 1
    assert first_encoding_difference(first, second, ["In the beginning God created the heaven and the earth."]) is None
    result = invoke("distill", distill_config(tmp_path, pretrained_teacher, grown))
    assert_ok(result)
    assert "differ in their files but encode the" in result.stderr and "texts checked" in result.stderr


def test_a_real_difference_is_refused_naming_the_text(tmp_path, pretrained_teacher):
    other = train_tokenizer(tmp_path / "other", vocabulary=320)
    difference = first_encoding_difference(load_tokenizer(pretrained_teacher), load_tokenizer(other),
                                           ["Plain text.", "And the earth was without form, and void."])
    assert difference is not None and difference.first_ids != difference.second_ids
    assert difference.text in "And the earth was without form, and void." and difference.text
    message = assert_user_error(invoke("distill", distill_config(tmp_path, pretrained_teacher, other)),
                                "encode", "differently", "token-level distillation needs one tokenizer")
    assert "320 tokens" in message and "300 tokens" in message
    assert not (tmp_path / "run").exists()
