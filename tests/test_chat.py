"""Conversations (data.dataset: chat): rows of messages rendered with the chat template, only assistant tokens
counted, bad rows refused in one line naming the row, and a chat model distilled through the CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from distillery.data.conversations import chat_blocks, read_chat_rows, render_conversation
from distillery.data.tokenizer import load_tokenizer
from distillery.errors import DataError
from language_models import VOCABULARY, lm_config, save_pretrained_model, tiny_config

# ChatML, as SmolLM2-Instruct and many others render conversations.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATION = [
    {"role": "system", "content": "You answer in the words of Genesis."},
    {"role": "user", "content": "What was in the beginning?"},
    {"role": "assistant", "content": "In the beginning God created the heaven and the earth."},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "And the earth was without form, and void."},
]


@pytest.fixture(scope="module")
def chat_tokenizer_dir(tmp_path_factory, tokenizer_dir):
    folder = tmp_path_factory.mktemp("chat-tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def chat_tokenizer(chat_tokenizer_dir):
    return load_tokenizer(chat_tokenizer_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def counted_text(tokenizer, blocks, row=0):
    """The text of the tokens the loss predicts in one block, each run of counted tokens on its own."""
    predicted = blocks.tokens[row, 1:]
    runs, current = [], []
    for token, counted in zip(predicted.tolist(), blocks.counted[row].tolist()):
        if counted:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_only_every_assistant_turn_and_its_end_of_turn_token_count(tmp_path, chat_tokenizer):
    rows = read_chat_rows(write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}]))
    blocks = chat_blocks(rows, chat_tokenizer, 256, source="chat.jsonl")
    # Our own rendering of ChatML: each assistant turn's text is followed by its end-of-turn marker.
    expected = [message["content"] + "<|im_end|>" for message in CONVERSATION if message["role"] == "assistant"]
    assert counted_text(chat_tokenizer, blocks) == expected
    # The tokens are the whole rendering's, as the model sees it at inference.
    text, _ = render_conversation(chat_tokenizer, CONVERSATION, None, "row")
    length = int(blocks.attention[0].sum()) + 1
    assert chat_tokenizer.decode(blocks.tokens[0, :length].tolist()) == text.rstrip("\n") or \
        chat_tokenizer.decode(blocks.tokens[0, :length].tolist()) == text


def test_prompt_completion_rows_and_parquet_and_datasets_folders_read_alike(tmp_path, chat_tokenizer):
    pair = {"prompt": "What was in the beginning?", "completion": "God created the heaven and the earth."}
    as_messages = {"messages": [{"role": "user", "content": pair["prompt"]},
                                {"role": "assistant", "content": pair["completion"]}]}
    jsonl = read_chat_rows(write_jsonl(tmp_path / "a.jsonl", [pair, as_messages]))
    assert jsonl[0].messages == jsonl[1].messages

    import pyarrow as arrow
    import pyarrow.parquet as parquet
    from datasets import Dataset

    parquet.write_table(arrow.Table.from_pylist([as_messages]), tmp_path / "a.parquet")
    Dataset.from_list([as_messages]).save_to_disk(str(tmp_path / "folder"))
    for path in (tmp_path / "a.parquet", tmp_path / "folder"):
        assert read_chat_rows(path)[0].messages == as_messages["messages"]


def test_a_conversation_longer_than_a_block_is_cut_at_the_end_and_counted(tmp_path, chat_tokenizer):
    short = [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": "And God said."}]
    long = [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": "And God said. " * 40}]
    rows = read_chat_rows(write_jsonl(tmp_path / "chat.jsonl", [{"messages": short}, {"messages": long}]))
    blocks = chat_blocks(rows, chat_tokenizer, 96, source="chat.jsonl")  # the short one is 70 tokens
    assert blocks.cut == 1 and blocks.tokens.shape == (2, 97) and bool(blocks.counted[1].any())


@pytest.mark.parametrize("row, fragment", [
    ({"messages": [{"role": "user", "content": "Hello"}]}, "line 2 has no assistant turn"),
    ({"messages": [{"role": "bot", "content": "Hi"}]}, "line 2: message 1 has role 'bot'"),
    ({"messages": [{"role": "user"}]}, "line 2: message 1 is not {role, content}"),
    ({"text": "Hello"}, "line 2 needs \"messages\""),
    ({"prompt": "Hello", "completion": 3}, "line 2: prompt and completion are strings or lists"),
])
def test_a_bad_row_is_refused_naming_its_line(tmp_path, row, fragment):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}, row])
    with pytest.raises(DataError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        read_chat_rows(path)


def test_a_template_that_hides_the_assistant_turn_is_refused_naming_the_row(tmp_path, chat_tokenizer):
    rows = read_chat_rows(write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}]))
    hiding = "{% for message in messages %}{% if message['role'] != 'assistant' %}{{ message['content'] }}{% endif %}" \
             "{% endfor %}"
    with pytest.raises(DataError, match="line 1: the chat template does not render assistant turn 1"):
        chat_blocks(rows, chat_tokenizer, 128, hiding)


def chat_rows(count: int) -> list[dict]:
    answers = ["Let there be light.", "It was good.", "The first day."]  # short: the tiny tokenizer spends ~4 a word
    return [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Verse {n}?"},
                          {"role": "assistant", "content": answers[n % 3]}]} for n in range(count)]


def test_a_chat_model_is_distilled_from_conversations_through_the_cli(tmp_path, chat_tokenizer_dir):
    teacher = save_pretrained_model(tmp_path / "teacher", "llama", layers=2, width=32)
    for file in chat_tokenizer_dir.iterdir():
        shutil.copy(file, teacher)
    long = {"messages": [{"role": "user", "content": "All of it?"}, {"role": "assistant", "content": "And God. " * 30}]}
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60) + [long])
    config = lm_config(tmp_path / "student", data={"dataset": "chat", "path": str(data), "block_length": 96},
                       model={"name": "causal_lm", "config": tiny_config("llama", layers=1, width=32)},
                       distill={"teacher": {"huggingface": str(teacher)}, "method": "token_kd"})
    result = invoke("distill", write_yaml(tmp_path / "chat.yaml", config))
    assert_ok(result)
    assert "assistant tokens counted" in result.stderr and "1 longer than 97 tokens were cut" in result.stderr
    run = tmp_path / "student"
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["task"] == "chat" and evaluation["perplexity"] > 1
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["dataset"] == "chat"
    assert (run / "tokenizer" / "tokenizer_config.json").is_file()

    answered = invoke("generate", run, "--chat", "Verse 1?", "--max-new-tokens", "8")
    assert_ok(answered)
    lines = answered.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["question", "teacher", "student"]
    assert "<|im_end|>" not in answered.stdout  # each answer ends at its end of turn
    assert_user_error(invoke("generate", run, "--chat", "Verse 1?", "--prompt", "And"), "either --prompt")
    check_the_hugging_face_export(run, tmp_path)


def check_the_hugging_face_export(run, tmp_path):
    """The exported folder loads in plain transformers, offline, and answers as `distillery generate` does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillery.app.workflows.generate import generate_text

    assert_ok(invoke("export", run, "--format", "huggingface"))
    folder = run / "huggingface"
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.chat_template == CHATML
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Verse 1?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    output = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=8, do_sample=False)
    theirs = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=False).split("<|im_end|>")[0]
    ours = generate_text(run, "Verse 1?", max_new_tokens=8, chat=True, teacher=False)["student"]
    assert theirs.replace(tokenizer.eos_token, "") == ours
    assert_ok(invoke("export", run, "--format", "huggingface"))  # an earlier export of ours is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert_user_error(invoke("export", run, "--format", "huggingface", "-o", mine), "not a distillery")
    assert (mine / "notes.txt").read_text() == "mine"


def test_the_end_of_turn_is_read_from_the_template(chat_tokenizer):
    from distillery.data.conversations import chat_prompt, end_of_turn

    assert end_of_turn(chat_tokenizer) == "<|im_end|>"
    assert chat_prompt(chat_tokenizer, "Hi?") == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"


def test_chat_settings_are_refused_where_they_do_not_apply(tmp_path, chat_tokenizer_dir):
    config = lm_config(tmp_path / "run", data={"dataset": "text", "path": str(chat_tokenizer_dir / "x.txt"),
                                               "chat_template": "t.jinja", "tokenizer": str(chat_tokenizer_dir)})
    assert_user_error(invoke("train", write_yaml(tmp_path / "a.yaml", config)), "data.chat_template is for conversations")
    packed_text = lm_config(tmp_path / "run", data={"dataset": "text", "path": str(chat_tokenizer_dir / "x.txt"),
                                                    "pack": True, "tokenizer": str(chat_tokenizer_dir)})
    assert_user_error(invoke("train", write_yaml(tmp_path / "p.yaml", packed_text)), "data.pack is for conversations")
    on_images = {"output_dir": str(tmp_path / "img"), "data": {"dataset": "digits", "pack": True}}
    assert_user_error(invoke("train", write_yaml(tmp_path / "i.yaml", on_images)), "data.pack is for text runs")
    missing = lm_config(tmp_path / "run", data={"dataset": "chat", "path": str(tmp_path / "none.jsonl"),
                                                "tokenizer": str(chat_tokenizer_dir)})
    assert_user_error(invoke("train", write_yaml(tmp_path / "b.yaml", missing)), "none.jsonl does not exist")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_conversations_score_as_they_do_one_a_block(tmp_path, chat_tokenizer, family):
    from distillery.data.token_batches import TokenBatches
    from distillery.eval.perplexity import language_model_metrics
    from distillery.models import build_model
    from distillery.models.text_transformers import check_packed_attention

    # A terse template, so several conversations fit a block of the tiny models' 128 positions.
    terse = "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}" \
            "{% if add_generation_prompt %}a: {% endif %}"
    rows = read_chat_rows(write_jsonl(tmp_path / "chat.jsonl", chat_rows(6)))
    padded = chat_blocks(rows, chat_tokenizer, 120, terse, source="chat")
    packed = chat_blocks(rows, chat_tokenizer, 120, terse, source="chat", pack=True)
    assert len(packed) < len(padded) and packed.attention is None and packed.counted_tokens == padded.counted_tokens
    assert counted_text(chat_tokenizer, packed)[:2] == [row.messages[-1]["content"] for row in rows[:2]]
    first = int(padded.attention[0].sum()) + 1  # the first conversation's tokens; the second starts at position 0
    assert packed.positions[0, first - 1: first + 1].tolist() == [first - 1, 0]
    torch.manual_seed(0)
    model = build_model({"name": "causal_lm", "config": tiny_config(family, layers=2)}, (120,), VOCABULARY)
    check_packed_attention(model, "the student")  # attention follows position_ids
    alone = language_model_metrics(model, TokenBatches(padded, 4))
    together = language_model_metrics(model, TokenBatches(packed, 4))
    assert together["tokens"] == alone["tokens"]
    assert together["nll"] == pytest.approx(alone["nll"], abs=1e-4)
