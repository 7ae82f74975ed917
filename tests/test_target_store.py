"""The teacher-target store: built in pieces, resumed after an interruption, shared out over torchrun processes, the
same bytes whichever way it was made; and runs that read it without loading the teacher."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from language_models import TEXT, VOCABULARY, lm_config, tiny_config

from distillery.data.text import load_text_blocks
from distillery.models import build_model
from distillery.teachers import token_targets
from distillery.teachers.token_targets import TargetSpec, teacher_targets

REPOSITORY = Path(__file__).resolve().parents[1]
STORE_FILES = ("values.npy", "indices.npy", "manifest.json")


class Interrupted(Exception):
    """Stands for a build killed half-way."""


@pytest.fixture(scope="module")
def teacher_and_blocks(tokenizer):
    torch.manual_seed(0)
    teacher = build_model({"name": "causal_lm", "config": tiny_config("llama", layers=2)}, (16,), VOCABULARY).eval()
    return teacher, load_text_blocks(TEXT, tokenizer, 16, cache=False).subset(torch.arange(30))


def _store_bytes(targets) -> dict[str, bytes]:
    return {name: (targets.directory / name).read_bytes() for name in STORE_FILES}


@pytest.mark.parametrize("spec", [TargetSpec.top_k(8, "compact"), TargetSpec.samples(12, temperature=2.0, seed=3)],
                         ids=["top_k", "samples"])
def test_an_interrupted_build_resumes_from_its_pieces_to_the_same_bytes(spec, teacher_and_blocks, tmp_path,
                                                                       monkeypatch):
    teacher, blocks = teacher_and_blocks
    monkeypatch.setattr(token_targets, "PIECE_BLOCKS", 4)  # 30 blocks: 8 pieces
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "whole"))
    whole, built = teacher_targets(teacher, blocks, spec, batch_size=3, progress=False)
    assert built and whole.bytes_per_token == spec.width * 2 + spec.value_bytes()

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "interrupted"))
    real, calls, armed = token_targets._targets_of, [], [True]

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 7 and armed[0]:  # two batches of 3 blocks a piece: pieces 0-2 are written when the 7th comes
            raise Interrupted
        return real(*args)
    monkeypatch.setattr(token_targets, "_targets_of", interrupted)
    with pytest.raises(Interrupted):
        teacher_targets(teacher, blocks, spec, batch_size=3, progress=False)
    pieces = next((tmp_path / "interrupted" / "top_k").glob("*.pieces"))
    assert sorted(path.name for path in pieces.glob("values-*.npy")) == [f"values-{i:06d}.npy" for i in range(3)]
    assert not list(pieces.glob("*.tmp"))  # nothing half-written is left
    calls.clear()
    armed[0] = False
    resumed, built = teacher_targets(teacher, blocks, spec, batch_size=3, progress=False)
    assert built and len(calls) == 5 * 2 - 1  # pieces 3-7 only: 4 pieces of 2 batches and the last of 1
    assert _store_bytes(resumed) == _store_bytes(whole)
    assert not pieces.exists()
    values, ids, tail = resumed[torch.tensor([0, 29])]
    assert values.shape == ids.shape == (2, 16, spec.width) and tail.shape == (2, 16)


def test_sampled_targets_are_counts_of_draws_from_the_teacher(teacher_and_blocks, tmp_path, monkeypatch):
    teacher, blocks = teacher_and_blocks
    teacher = copy.deepcopy(teacher)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)  # a confident teacher: its likeliest token is drawn most
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path))
    targets, _ = teacher_targets(teacher, blocks, TargetSpec.samples(12), progress=False)
    counts = torch.from_numpy(np.array(targets.values)).long()
    assert targets.values.dtype.name == "uint8" and (counts.sum(-1) == 12).all()
    assert targets.bytes_per_token == 36  # 12 16-bit ids and 12 one-byte counts
    weights, ids, tail = targets[torch.arange(len(blocks))]
    assert torch.allclose(weights.exp().sum(-1), torch.ones(()))
    assert (tail == float("-inf")).all()
    with torch.no_grad():
        logits = teacher(input_ids=blocks.tokens[:, :-1]).logits
    assert (ids[..., 0] == logits.argmax(-1)).float().mean() > 0.5


def _config(tmp_path: Path, teacher: Path, name: str, **distill) -> Path:
    from cli_helpers import write_yaml

    document = lm_config(tmp_path / name, model={"name": "causal_lm", "base": str(teacher), "num_hidden_layers": 1},
                         distill={"teacher": {"huggingface": str(teacher)}, "method": "token_kd", **distill})
    document["train"]["epochs"] = 1
    return write_yaml(tmp_path / f"{name}.yaml", document)


def _environment(cache: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    environment.update(OMP_NUM_THREADS="1", DISTILLERY_CACHE=str(cache),
                       PYTHONPATH=os.pathsep.join([str(REPOSITORY), environment.get("PYTHONPATH", "")]))
    return environment


def test_distillery_cache_under_torchrun_shares_the_pieces_and_makes_the_same_store(tmp_path, pretrained_teacher):
    config = _config(tmp_path, pretrained_teacher, "sampled", teacher_samples=12, temperature=2.0)
    command = ["-m", "distillery", "cache", str(config), "--set", "data.train_limit=150"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *command], env=_environment(tmp_path / "two"), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "12 sampled teacher tokens a position (T = 2): 36 bytes a token" in two.stdout
    assert "by 2 processes" in two.stdout and "test perplexity" in two.stdout
    assert two.stdout.count("sampled teacher tokens") == 1  # one line, from rank 0
    one = subprocess.run([sys.executable, *command], env=_environment(tmp_path / "one"), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    stores = [next((tmp_path / name / "top_k").glob("*[!s]")) for name in ("two", "one")]
    assert stores[0].name == stores[1].name  # the same fingerprint
    for name in STORE_FILES:
        assert (stores[0] / name).read_bytes() == (stores[1] / name).read_bytes(), name
    assert json.loads((stores[0] / "build.json").read_text())["processes"] == 2


def test_a_run_on_cached_sampled_targets_never_loads_the_teacher(tmp_path, pretrained_teacher, monkeypatch):
    from cli_helpers import invoke

    from distillery.app.tasks import text_task

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    config = _config(tmp_path, pretrained_teacher, "run", teacher_samples=8)
    result = invoke("cache", config)
    assert result.exit_code == 0, result.output
    assert "8 sampled teacher tokens a position (T = 1): 24 bytes a token" in result.output
    assert "already" not in result.output and "built at" in result.output
    again = invoke("cache", config)
    assert again.exit_code == 0 and "reused from" in again.output
    monkeypatch.setattr(text_task, "load_language_teacher", lambda *args, **kwargs: pytest.fail("teacher loaded"))
    result = invoke("distill", config)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["teacher"]["perplexity"] > 1 and "read from the cache" in evaluation["teacher_note"]
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(row["train/loss"])) for row in history)


def test_distillery_cache_refuses_a_run_of_whole_distributions_in_one_line(tmp_path, pretrained_teacher):
    from cli_helpers import assert_user_error, invoke

    message = assert_user_error(invoke("cache", _config(tmp_path, pretrained_teacher, "whole")), "whole")
    assert "teacher_samples" in message and "top_k" in message


def test_teacher_samples_refuses_top_k_and_other_divergences():
    from distillery.methods import create_method

    model = build_model({"name": "causal_lm", "config": tiny_config("gpt2", layers=1)}, (16,), VOCABULARY)
    with pytest.raises(Exception, match="forward KL's gradient"):
        create_method("token_kd", model, model, teacher_samples=8, top_k=8)
    with pytest.raises(Exception, match="forward KL's gradient"):
        create_method("token_kd", model, model, teacher_samples=8, divergence="reverse_kl")
