"""Teacher targets made elsewhere: vLLM-style prompt_logprobs and {token_id, logprob} columns, aligned to the run's
blocks by token ids, refused in one line when another tokenizer made them or they leave blocks out."""
from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import assert_user_error, invoke, write_yaml
from language_models import TEXT, VOCABULARY, lm_config, tiny_config, train_tokenizer

from distillery.data.text import load_text_blocks
from distillery.data.tokenizer import load_tokenizer
from distillery.errors import DataError
from distillery.models import build_model
from distillery.teachers.logprob_files import describe_file_targets, file_targets

TOP = 5


def _rows(tokenizer, lines):
    """Each line (as the run reads it, with its newline): its ids and a tiny teacher's top-5 log-probabilities of each
    token given the ones before it, plus the token itself where it is outside them (as vLLM gives them)."""
    torch.manual_seed(0)
    teacher = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=1)}, (16,), VOCABULARY).eval()
    rows = []
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(teacher(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        entries = [None]
        for position in range(1, len(ids)):
            values, top = log_probs[position - 1].topk(TOP)
            entry = {str(t): {"logprob": v, "rank": r + 1, "decoded_token": tokenizer.decode([t])}
                     for r, (t, v) in enumerate(zip(top.tolist(), values.tolist()))}
            actual = ids[position]
            entry.setdefault(str(actual), {"logprob": log_probs[position - 1, actual].item(), "rank": 99})
            entries.append(entry)
        rows.append({"prompt": line, "prompt_token_ids": ids, "prompt_logprobs": entries})
    return rows


def _lines():
    return TEXT.read_text().splitlines(keepends=True)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def vllm_rows(tokenizer):
    return _rows(tokenizer, _lines())


def test_vllm_prompt_logprobs_become_the_top_k_of_each_blocks_position(vllm_rows, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False).subset(torch.arange(20))
    path = _write_jsonl(tmp_path / "vllm.jsonl", vllm_rows)
    targets = file_targets(path, tokenizer, blocks)
    line = describe_file_targets(targets, path)
    assert targets.spec.width == TOP and "no tail mass" in line and "top 5" in line
    values, ids, tail = targets[torch.arange(20)]
    # Block 3, position 7 predicts the stream's token 3 · 32 + 8: find its row and entry by hand.
    stream = [(row, position) for row in vllm_rows for position in range(len(row["prompt_token_ids"]))]
    row, position = stream[3 * 32 + 8]
    entry = sorted(row["prompt_logprobs"][position].items(), key=lambda item: -item[1]["logprob"])[:TOP]
    assert ids[3, 7].tolist() == [int(token) for token, _ in entry]
    assert values[3, 7].tolist() == pytest.approx([value["logprob"] for _, value in entry])
    held = sum(math.exp(value["logprob"]) for _, value in entry)
    assert tail[3, 7].item() == pytest.approx(math.log(1 - held), rel=1e-4)


def test_a_next_token_column_in_parquet_gives_the_same_targets(vllm_rows, tokenizer, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False).subset(torch.arange(20))
    columns = [{"text": row["prompt"], "input_ids": row["prompt_token_ids"],
                "logprobs": [[{"token_id": int(t), "logprob": v["logprob"]} for t, v in entry.items()]
                             for entry in row["prompt_logprobs"][1:]]}  # entry i: token i + 1
               for row in vllm_rows]
    pq.write_table(pa.Table.from_pylist(columns), tmp_path / "kd.parquet")
    from_parquet = file_targets(tmp_path / "kd.parquet", tokenizer, blocks)[torch.arange(20)]
    from_jsonl = file_targets(_write_jsonl(tmp_path / "vllm.jsonl", vllm_rows), tokenizer, blocks)[torch.arange(20)]
    for mine, theirs in zip(from_parquet, from_jsonl):
        assert torch.equal(mine, theirs)


def test_a_file_made_with_another_tokenizer_is_refused_at_the_first_differing_token(tokenizer, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    other = load_tokenizer(train_tokenizer(tmp_path / "other", vocabulary=280))
    rows = _rows(other, _lines()[:3])
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False).subset(torch.arange(2))
    ours = tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"]
    first = next(i for i, (a, b) in enumerate(zip(ours, rows[0]["prompt_token_ids"])) if a != b)
    with pytest.raises(DataError, match=rf"row 1: token {first} is {rows[0]['prompt_token_ids'][first]} .* in the "
                                        r"file but .* with this run's tokenizer"):
        file_targets(_write_jsonl(tmp_path / "other.jsonl", rows), tokenizer, blocks)


def test_rows_that_leave_a_block_out_are_refused(vllm_rows, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False).subset(torch.arange(20))
    with pytest.raises(DataError, match=r"do not cover training block \d+ \(it starts \[\d+, "):
        file_targets(_write_jsonl(tmp_path / "short.jsonl", vllm_rows[:3]), tokenizer, blocks)


def test_a_run_learns_from_the_file_without_a_teacher_and_bad_files_are_one_line(vllm_rows, tokenizer_dir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    logprobs = _write_jsonl(tmp_path / "vllm.jsonl", vllm_rows)
    document = lm_config(tmp_path / "run", distill={"method": "token_kd", "teacher_logprobs": str(logprobs)})
    document["data"]["tokenizer"] = str(tokenizer_dir)
    document["data"]["test_fraction"] = 0.05  # the file's rows stop before the end-of-text token closing the text
    result = invoke("distill", write_yaml(tmp_path / "run.yaml", document))
    assert result.exit_code == 0, result.output
    assert "teacher targets read from" in result.stderr
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert math.isfinite(evaluation["perplexity"]) and "teacher_logprobs" in evaluation["teacher_note"]
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["teacher_targets"]["kind"] == "file" and model["teacher_targets"]["width"] == TOP

    document["output_dir"] = str(tmp_path / "refused")
    document["distill"]["teacher_logprobs"] = str(tmp_path / "missing.jsonl")
    assert_user_error(invoke("distill", write_yaml(tmp_path / "missing.yaml", document)), "does not exist")
    document["distill"].update(teacher_logprobs=str(logprobs), top_k=8)
    assert_user_error(invoke("distill", write_yaml(tmp_path / "top_k.yaml", document)), "remove top_k")
    assert not (tmp_path / "refused").exists()


def test_padded_blocks_of_one_row_each_align_without_their_padding(tokenizer, tmp_path, monkeypatch):
    # One row a block, padded, only the completion counted: the layout of chat data and of Axolotl's KD datasets.
    from distillery.data.text import prompt_completion_blocks

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    pairs = [("Who made the earth?", " God made it."), ("And God said", " let there be light")]
    blocks = prompt_completion_blocks(pairs, tokenizer, 24, "pairs")
    rows = _rows(tokenizer, [prompt + completion + tokenizer.eos_token for prompt, completion in pairs])
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows[::-1])  # any order
    targets = file_targets(path, tokenizer, blocks)
    line = describe_file_targets(targets, path)
    assert "positions predict the first token of a row" not in line  # no counted position predicts a row's start
    values, ids, _ = targets[torch.arange(2)]
    for block, row in enumerate(rows):
        for position in blocks.counted[block].nonzero().flatten().tolist():
            entry = row["prompt_logprobs"][position + 1]
            best = max(entry.items(), key=lambda item: item[1]["logprob"])
            assert ids[block, position, 0].item() == int(best[0])
            assert values[block, position, 0].item() == pytest.approx(best[1]["logprob"])


@pytest.mark.parametrize("damage, message", [
    (lambda row: row["prompt_logprobs"][2].update({"5000": {"logprob": -9.0}}), "names token 5000, outside"),
    (lambda row: row["prompt_logprobs"][2].update({str(t): {"logprob": -0.1} for t in range(5)}), "add up to"),
    (lambda row: row["prompt_logprobs"].pop(), "is the last one missing"),
    (lambda row: row["prompt_logprobs"].__setitem__(3, {}), "entry 3 is empty"),
])
def test_entries_that_cannot_be_a_distribution_are_refused_in_one_line(damage, message, vllm_rows, tokenizer,
                                                                       tmp_path, monkeypatch):
    import copy

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    rows = copy.deepcopy(vllm_rows[:4])
    damage(rows[1])
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False).subset(torch.arange(1))
    with pytest.raises(DataError, match=message):
        file_targets(_write_jsonl(tmp_path / "bad.jsonl", rows), tokenizer, blocks)
    assert not (tmp_path / "cache" / "top_k").exists() or not any((tmp_path / "cache" / "top_k").iterdir())


def test_a_file_that_is_not_parquet_is_one_line(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1garbage")
    blocks = load_text_blocks(TEXT, tokenizer, 32, cache=False).subset(torch.arange(1))
    with pytest.raises(DataError, match="not a readable Parquet file"):
        file_targets(tmp_path / "garbage.parquet", tokenizer, blocks)
