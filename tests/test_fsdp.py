"""Sharded runs (``train.parallel: fsdp``): two gloo processes against one, a SIGKILL and the resume, the final
checkpoint read by one process, and what is refused.

Two FSDP processes add the shards' gradients in another order than one backward pass over the whole batch, and
AdamW divides by the square root of the second moment, so the last bits move more than under DDP: over the twelve
steps of the language-model run here the largest weight difference measured was 6.7e-6 (on weights of size 0.07),
9.3e-7 with hidden-state matching, 8e-8 for a LoRA student; the tolerance is atol 5e-5, rtol 1e-4, while training moves the weights by
more than 1e-2, so a wrong sharding of the batch or of the gradients fails it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from language_models import lm_config, tiny_config
from safetensors.torch import load_file
from test_distributed_resume import torchrun
from test_resume import assert_same_run, step_config

from distillery.app.config.files import load_config
from distillery.data import ArrayDataset, BatchIterator
from distillery.engine.distributed import DistributedContext
from distillery.engine.fsdp import block_classes, is_sharded, shard_method
from distillery.engine.sharded_checkpoint import load_sharded
from distillery.errors import CheckpointError, ConfigError
from distillery.methods import create_method
from distillery.models import build_model

ATOL, RTOL = 5e-5, 1e-4


def distillation_config(directory: Path, teacher: Path, parallel: str, lora: dict | None = None, **distill) -> Path:
    """Two epochs of token-level KD from the 3-block Llama teacher into a 2-block GPT-2 (tied embeddings), 16 blocks
    a step (8 a process), gradients clipped (their norm taken over the shards), the state saved every 2 steps."""
    document = lm_config(directory / f"run-{parallel}",
                         distill={"teacher": {"huggingface": str(teacher)}, "method": "token_kd", **distill})
    document["data"]["tokenizer"] = str(teacher)
    document["model"] = {"name": "causal_lm", "config": tiny_config("gpt2", layers=2, width=32),
                         **({"lora": lora} if lora else {})}
    document["train"].update(parallel=parallel, checkpoint_every_steps=2, grad_clip=1.0)
    return write_yaml(directory / f"{parallel}.yaml", document)


@pytest.mark.parametrize("distill", [{}, {"hidden_weight": 0.5}, {"lora": {"r": 4}}],
                         ids=["logits", "hidden-states", "lora"])
def test_two_sharded_processes_end_where_one_process_does(tmp_path, pretrained_teacher, monkeypatch, distill):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    sharded = torchrun("distill", distillation_config(tmp_path, pretrained_teacher, "fsdp", **distill),
                       DISTILLERY_CACHE=str(tmp_path / "cache"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    whole = "PeftModel" if "lora" in distill else "GPT2LMHeadModel"
    assert f"FSDP: student: 2 blocks (GPT2Block) and the rest of {whole}" in sharded.stderr
    assert "FSDP: teacher: 3 blocks (LlamaDecoderLayer) and the rest of LlamaForCausalLM" in sharded.stderr
    assert "returned a view tensor" not in sharded.stderr
    assert_ok(invoke("distill", distillation_config(tmp_path, pretrained_teacher, "ddp", **distill)))

    ours, theirs = tmp_path / "run-fsdp", tmp_path / "run-ddp"
    initial = build_model(load_config(tmp_path / "ddp.yaml").model, (32,), 300)  # the seed's starting weights
    for name in ("model.safetensors", "last.safetensors"):
        sharded_weights, single = load_file(str(ours / name)), load_file(str(theirs / name))
        assert sharded_weights.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(sharded_weights[key], value, atol=ATOL, rtol=RTOL, msg=key)
    if "lora" not in distill:
        moved = max(float((single[key] - value).abs().max()) for key, value in initial.state_dict().items())
        assert moved > 1e-2, "training hardly moved the weights: the tolerance could not tell a wrong run"
    evaluations = [json.loads((run / "evaluation.json").read_text()) for run in (ours, theirs)]
    assert evaluations[0]["perplexity"] == pytest.approx(evaluations[1]["perplexity"], rel=1e-4)
    assert evaluations[0]["teacher"]["perplexity"] == pytest.approx(evaluations[1]["teacher"]["perplexity"], rel=1e-6)
    assert not (ours / "state").exists(), "a finished sharded run keeps no training state"

    # The final student is one ordinary checkpoint: one process reads it and writes with it.
    generated = invoke("generate", ours, "--prompt", "In the beginning", "--max-new-tokens", "4")
    assert_ok(generated)
    assert "student: In the beginning" in generated.output


def sharded_step_config(directory: Path) -> Path:
    """The resume tests' dropout MLP for two epochs, each Linear a block of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    document = step_config(directory / "run")
    document["train"].update(epochs=2, parallel="fsdp", fsdp_blocks=["Linear"])
    return write_yaml(directory / "run.yaml", document)


def test_a_sigkilled_sharded_run_resumes_bit_for_bit_and_its_checkpoint_serves_one_process(tmp_path):
    reference = torchrun("train", sharded_step_config(tmp_path / "uninterrupted"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "FSDP: student: 2 blocks (Linear) and the rest of StepModel" in reference.stderr

    run_dir = tmp_path / "run"
    killed = torchrun("train", sharded_step_config(tmp_path), DISTILLERY_TEST_SIGNAL_AT="30:SIGKILL:1")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    state = json.loads((run_dir / "state" / "state.json").read_text())
    assert state["position"]["global_step"] == 25 and state["world_size"] == 2
    shards = sorted(path.name for path in (run_dir / "state" / state["sharded"]["directory"]).iterdir())
    assert shards == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    plain = load_file(str(run_dir / "state" / state["tensors"]))
    assert not any(key.startswith("state/model/") for key in plain), "the weights were gathered into rank 0's file"
    assert not torch.equal(plain["state/ranks/0/rng/torch"], plain["state/ranks/1/rng/torch"])

    assert_user_error(invoke("train", "--resume", run_dir), "saved by a run of 2 process(es), but this one has 1")
    config = run_dir / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("parallel: fsdp", "parallel: ddp").replace("fsdp_blocks:\n  - Linear", ""))
    switched = torchrun("train", "--resume", run_dir)  # its config.yaml edited to replicate the models
    assert "saved by a run with train.parallel: fsdp, but this one has ddp" in switched.stderr, switched.stderr[-2000:]
    assert switched.returncode != 0 and json.loads((run_dir / "state" / "state.json").read_text()) == state
    config.write_text(original)

    resumed = torchrun("train", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, tmp_path / "uninterrupted" / "run")

    # evaluate and export read the sharded run's checkpoint in one process.
    evaluated = invoke("evaluate", run_dir, "--allow-factory", "step_model:make")
    assert_ok(evaluated)
    accuracy = json.loads((run_dir / "evaluation.json").read_text())["accuracy"]
    assert f"{accuracy:.2%}" in evaluated.output
    assert_ok(invoke("export", run_dir, "--allow-factory", "step_model:make"))
    assert (run_dir / "model.onnx").is_file()


# ---------------------------------------------------------------- without processes


def test_the_blocks_are_those_hugging_face_declares_also_through_lora():
    from transformers import AutoConfig, AutoModelForCausalLM

    from distillery.models.adapters import add_lora

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**tiny_config("llama", layers=1, width=16)))
    assert block_classes(model) == ("LlamaDecoderLayer",)
    assert block_classes(add_lora(model, {"r": 2})) == ("LlamaDecoderLayer",)
    assert block_classes(torch.nn.Linear(2, 2)) == ()


def test_methods_whose_processes_would_run_different_forwards_are_refused_in_one_line():
    student = build_model({"name": "mlp", "hidden": [4]}, (1, 4, 4), 3)
    teacher = build_model({"name": "mlp", "hidden": [4]}, (1, 4, 4), 3)
    on_policy = create_method("token_kd", student, teacher, on_policy=0.5)
    with pytest.raises(ConfigError, match=r"cannot run with train.parallel: fsdp \(on_policy: each process's student "
                                          r"writes text of its own length"):
        shard_method(on_policy, torch.device("cpu"))
    peers = create_method("mutual", student, peers=[build_model({"name": "mlp", "hidden": [4]}, (1, 4, 4), 3)])
    with pytest.raises(ConfigError, match="trains peer models beside the student"):
        shard_method(peers, torch.device("cpu"))


@pytest.mark.parametrize("train, message", [
    ({"fsdp_blocks": ["Block"]}, "fsdp_blocks names the blocks FSDP shards; set parallel: fsdp"),
    ({"parallel": "fsdp", "compile": True}, "compile and parallel: fsdp are not supported together"),
    ({"parallel": "zero3"}, "parallel"),
])
def test_sharding_settings_that_cannot_work_are_refused(tmp_path, train, message):
    document = step_config(tmp_path / "run")
    document["train"].update(train)
    assert_user_error(invoke("train", write_yaml(tmp_path / "run.yaml", document)), message)
    assert not (tmp_path / "run").exists()


def test_under_fsdp_every_process_runs_a_forward_for_every_evaluation_batch():
    """An evaluation batch smaller than the processes leaves a shard empty: skipped under DDP, but with sharded models
    every forward is a collective, so that process gets a stand-in sample that counts nothing."""
    data = ArrayDataset(torch.arange(5.0).reshape(5, 1), torch.arange(5) % 2, ["a", "b"], "numbers")
    batches = BatchIterator(data, 4, shuffle=False)  # batches of 4 (shards of 2, 1, 1) and 1 (shards of 1, 0, 0)
    replicated = DistributedContext(rank=2, world_size=3).shard(batches, training=False)
    assert [batch.labels.tolist() for batch in replicated] == [[1]]
    sharded = DistributedContext(rank=2, world_size=3, fsdp=True).shard(batches, training=False)
    assert [batch.labels.tolist() for batch in sharded] == [[1], [-1]]
    assert DistributedContext(rank=0, world_size=1).sharded("fsdp").fsdp is False  # one process: nothing to shard
    assert DistributedContext(rank=0, world_size=2).sharded("fsdp").fsdp is True


def test_blocks_named_by_no_model_are_refused_before_anything_is_sharded():
    student = build_model({"name": "mlp", "hidden": [4]}, (1, 4, 4), 3)
    method = create_method("supervised", student)
    with pytest.raises(ConfigError, match=r"train.fsdp_blocks \['Block'\] names no module of the student or a "
                                          r"teacher; their classes include: .*Linear"):
        shard_method(method, torch.device("cpu"), blocks=["Block"])
    assert not is_sharded(method)


def test_a_sharded_state_whose_shards_are_missing_is_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="sharded-3 is missing; the sharded training state is incomplete"):
        load_sharded({}, tmp_path / "sharded-3")


def test_born_again_generations_with_fsdp_are_refused(tmp_path):
    document = step_config(tmp_path / "run", distill={"teacher": str(tmp_path / "teacher"), "generations": 2})
    document["train"]["parallel"] = "fsdp"
    assert_user_error(invoke("distill", write_yaml(tmp_path / "run.yaml", document)),
                      "born-again generations (distill.generations) run with train.parallel: ddp")
    assert not (tmp_path / "run").exists()
