"""LoRA students (model.lora, through peft): only the adapters train, the run records what it trained, a LoRA run
resumes bit-identical after SIGKILL, and exports merged weights or the adapters alone."""
from __future__ import annotations

import json
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import assert_ok, assert_user_error, invoke, write_yaml
from distillery.errors import ConfigError
from distillery.models import build_model
from distillery.models.checkpoint import load_model
from language_models import VOCABULARY, lm_config, tiny_config
from test_resume import assert_same_run, start_cli

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def lora_sections(teacher, **train) -> dict:
    return {"model": {"name": "causal_lm", "base": str(teacher), "num_hidden_layers": 1, "lora": LORA},
            "train": {"epochs": 2, "batch_size": 16, "lr": 1e-2, **train},
            "distill": {"teacher": {"huggingface": str(teacher)}, "method": "token_kd", "init_from_teacher": True}}


def test_only_the_adapters_are_trainable():
    model = build_model({"name": "causal_lm", "config": tiny_config("llama"), "lora": LORA}, (16,), VOCABULARY)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    assert any(name.endswith("q_proj.lora_A.default.weight") for name in trainable)
    assert not any("k_proj.lora" in name for name in trainable)


@pytest.mark.parametrize("lora, fragment", [
    ({"rank": 4}, "does not take rank; it takes: r, alpha"),
    ({"r": 0}, "a whole number of at least 1"),
    ({"dropout": 1.5}, "model.lora.dropout is in [0, 1)"),
])
def test_bad_lora_settings_are_named(lora, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        build_model({"name": "causal_lm", "config": tiny_config("llama"), "lora": lora}, (16,), VOCABULARY)


def test_a_lora_student_distils_records_what_it_trained_and_exports(tmp_path, pretrained_teacher):
    run = tmp_path / "lora"
    result = invoke("distill", write_yaml(tmp_path / "lora.yaml", lm_config(run, **lora_sections(pretrained_teacher))))
    assert_ok(result)
    assert "LoRA (rank 4, alpha 8) on ['q_proj', 'v_proj']" in result.stderr
    adapters = json.loads((run / "model.json").read_text())["adapters"]
    assert 0 < adapters["trainable_parameters"] < adapters["parameters"] / 10
    saved = load_file(str(run / "model.safetensors"))
    teacher = load_file(str(pretrained_teacher / "model.safetensors"))
    # Frozen: block 0's query weights are the teacher's block 0, copied and never trained; the adapters moved.
    frozen = next(key for key in saved if key.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert torch.equal(saved[frozen], teacher["model.layers.0.self_attn.q_proj.weight"])
    assert any(key.endswith("lora_B.default.weight") and saved[key].abs().sum() > 0 for key in saved)

    # Merged: a plain transformers model with the run's function; the adapters alone, on request.
    assert_ok(invoke("export", run, "--format", "huggingface"))
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(run / "huggingface", local_files_only=True).eval()
    student, _ = load_model(run)
    ids = torch.randint(0, VOCABULARY, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, student.eval()(input_ids=ids).logits, atol=1e-5)
    assert not any("lora" in key for key in load_file(str(run / "huggingface" / "model.safetensors")))
    assert_ok(invoke("export", run, "--format", "huggingface", "--adapters"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {path.name for path in (run / "adapters").iterdir()}


def test_adapters_alone_need_a_lora_run(tmp_path, pretrained_teacher):
    sections = lora_sections(pretrained_teacher)
    del sections["model"]["lora"]
    sections["train"]["epochs"] = 1
    run = tmp_path / "full"
    assert_ok(invoke("distill", write_yaml(tmp_path / "full.yaml", lm_config(run, **sections))))
    assert_user_error(invoke("export", run, "--format", "huggingface", "--adapters"), "trained no adapters")


def test_a_lora_run_resumes_bit_identical_after_sigkill(tmp_path, pretrained_teacher):
    # Four epochs of 6 steps, the state saved every 2: killed as soon as a state exists, most of the run is ahead.
    sections = lora_sections(pretrained_teacher, checkpoint_every_steps=2, epochs=4)
    reference = tmp_path / "reference"
    assert_ok(invoke("distill", write_yaml(tmp_path / "reference.yaml", lm_config(reference, **sections))))
    killed = tmp_path / "killed"
    process = start_cli(write_yaml(tmp_path / "killed.yaml", lm_config(killed, **sections)), "distill")
    manifest = killed / "state" / "state.json"
    deadline = time.monotonic() + 120
    while not manifest.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manifest.is_file(), f"no training state was saved: {process.communicate()}"
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.json").exists()
    # Only what trains is saved: the adapters; the frozen base weights are rebuilt from the config.
    saved = json.loads(manifest.read_text())["payload"]
    assert saved["model"] and all("lora_" in key for key in saved["model"])
    assert all("lora_" in key for key in saved["result"]["best_state"] or ())
    assert_ok(invoke("distill", "--resume", killed))
    assert_same_run(killed, reference)
