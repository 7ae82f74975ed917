"""Resuming interrupted runs: killed (SIGKILL) or stopped (SIGINT/SIGTERM) runs end bit-identical to uninterrupted ones."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, snapshot, write_yaml
from safetensors.torch import load_file

from distillery.engine.state_codec import decode, encode

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 21  # 1,293 digits training samples in batches of 64
EPOCHS = 3


def step_config(output_dir: Path, **sections) -> dict:
    """Three epochs of an MLP with dropout (training draws random numbers), state saved every 5 steps."""
    document = run_config(output_dir, model={"name": "step_model:make"},
                          train={"epochs": EPOCHS, "batch_size": 64, "lr": 0.01, "checkpoint_every_steps": 5})
    document.update(sections)
    return document


def start_cli(config: Path, command: str = "train", **environment: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), **environment}
    return subprocess.Popen([sys.executable, "-m", "distillery", command, str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_run(resumed: Path, reference: Path, files=("model.safetensors", "last.safetensors")) -> None:
    """The same weights bit for bit (best and last), and the same metrics except for timings (wall time, speed)."""
    for name in files:
        ours, theirs = weights(resumed / name), weights(reference / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key} differs from the uninterrupted run"

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time_s", "train/tokens_per_s")}
                for line in lines]

    assert records(resumed) == records(reference)
    assert not (resumed / "state").exists(), "a finished run keeps no training state"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    directory = tmp_path_factory.mktemp("reference")
    assert_ok(invoke("train", write_yaml(directory / "run.yaml", step_config(directory / "run"))))
    return directory / "run"


def test_resume_after_sigkill_at_a_random_step_is_bit_identical(tmp_path, reference_run):
    output_dir = tmp_path / "run"
    process = start_cli(write_yaml(tmp_path / "run.yaml", step_config(output_dir)), DISTILLERY_TEST_STEP_SLEEP="0.02")
    manifest = output_dir / "state" / "state.json"
    deadline = time.monotonic() + 60
    while not manifest.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manifest.is_file(), f"no training state was saved: {process.communicate()}"
    # The first state comes at step 5 of 63; the rest of the run takes over a second at 20 ms a step.
    time.sleep(random.uniform(0.0, 0.6))
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    position = json.loads(manifest.read_text())["position"]
    assert position["global_step"] < STEPS_PER_EPOCH * EPOCHS and not (output_dir / "model.json").exists()

    assert_ok(invoke("train", "--resume", output_dir))
    assert_same_run(output_dir, reference_run)


def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path, reference_run):
    """Through a real process; SIGINT (exit 130) is sent in-process by the distillation tests below."""
    output_dir = tmp_path / "run"
    at = STEPS_PER_EPOCH + 9  # the 9th step of epoch 2
    process = start_cli(write_yaml(tmp_path / "run.yaml", step_config(output_dir)),
                        DISTILLERY_TEST_SIGNAL_AT=f"{at}:SIGTERM")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert f"interrupted at epoch 2 step 9; resume with: distillery train --resume {output_dir}" in stderr
    state = json.loads((output_dir / "state" / "state.json").read_text())
    assert state["position"] == {"epoch": 2, "step": 9, "epoch_done": False, "global_step": at, "epochs": EPOCHS}
    assert len((output_dir / "metrics.jsonl").read_text().splitlines()) == 1

    assert_ok(invoke("train", "--resume", output_dir))
    assert_same_run(output_dir, reference_run)


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("teacher")
    assert_ok(invoke("train", write_yaml(directory / "teacher.yaml", run_config(directory / "run"))))
    return directory / "run"


DISTILL_CASES = {
    # The teacher's logits on two fixed augmented views, from the teacher-output cache after the resume.
    "hinton-teacher-views": {"data": {"augment": {"shift": 1}},
                             "distill": {"teacher": "TEACHER", "method": "hinton", "teacher_views": 2}},
    # Peers are trainable: their weights, optimiser moments and best epochs are part of the state.
    "mutual-peer": {"distill": {"method": "mutual", "peers": [{"name": "mlp", "hidden": [16]}]}},
    # FitNets adds an adapter, trained with the student.
    "fitnet-adapter": {"distill": {"teacher": "TEACHER", "method": "fitnet", "student_layer": "layers.2",
                                   "teacher_layer": "features.0"}},
}


@pytest.mark.parametrize("case", DISTILL_CASES)
def test_distillation_resumes_bit_identical(tmp_path, digits_teacher, monkeypatch, case):
    sections = json.loads(json.dumps(DISTILL_CASES[case]).replace("TEACHER", str(digits_teacher)))
    sections["train"] = {"epochs": 2, "batch_size": 64, "lr": 0.01, "checkpoint_every_steps": 4}
    reference = tmp_path / "reference"
    assert_ok(invoke("distill", write_yaml(tmp_path / "reference.yaml", step_config(reference, **sections))))

    interrupted = tmp_path / "interrupted"
    config = write_yaml(tmp_path / "interrupted.yaml", step_config(interrupted, **sections))
    monkeypatch.setenv("DISTILLERY_TEST_SIGNAL_AT", f"{STEPS_PER_EPOCH + 3}:SIGINT")  # in this process
    result = invoke("distill", config)
    assert result.exit_code == 130, result.stderr
    assert f"distillery distill --resume {interrupted}" in result.stderr
    monkeypatch.delenv("DISTILLERY_TEST_SIGNAL_AT")
    assert_ok(invoke("distill", "--resume", interrupted))
    assert_same_run(interrupted, reference)
    for peer in ("peers/peer1",) if case == "mutual-peer" else ():
        assert_same_run(interrupted / peer, reference / peer, files=("model.safetensors",))


def test_a_new_run_into_an_interrupted_one_is_refused(tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    config = write_yaml(tmp_path / "run.yaml", step_config(output_dir))
    monkeypatch.setenv("DISTILLERY_TEST_SIGNAL_AT", "7:SIGINT")
    assert invoke("train", config).exit_code == 130
    before = snapshot(output_dir / "state")
    assert_user_error(invoke("train", config), "interrupted run", f"--resume {output_dir}", "--overwrite")
    assert snapshot(output_dir / "state") == before


def test_state_files_are_safetensors_and_json_committed_last(tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    monkeypatch.setenv("DISTILLERY_TEST_SIGNAL_AT", "12:SIGINT")
    assert invoke("train", write_yaml(tmp_path / "run.yaml", step_config(output_dir))).exit_code == 130
    files = sorted(path.name for path in (output_dir / "state").iterdir())
    document = json.loads((output_dir / "state" / "state.json").read_text())
    # Saves: steps 5 and 10 (every 5), then the interruption at step 12; only the committed tensors remain.
    assert files == ["state.json", "tensors-3.safetensors"] and document["tensors"] == "tensors-3.safetensors"
    tensors = weights(output_dir / "state" / document["tensors"])
    assert {"state/ranks/0/rng/torch", "state/model/student.layers.1.weight"} <= set(tensors)
    assert any(key.startswith("state/optimizer/state/") for key in tensors)
    assert document["data_order"] == {"seed": 0, "epoch": 1, "position": 12}
    assert document["world_size"] == 1 and not any(key.startswith("state/ranks/1/") for key in tensors)


def test_a_state_of_another_version_is_refused(tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    monkeypatch.setenv("DISTILLERY_TEST_SIGNAL_AT", "3:SIGINT")
    assert invoke("train", write_yaml(tmp_path / "run.yaml", step_config(output_dir))).exit_code == 130
    manifest = output_dir / "state" / "state.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 1}))
    assert_user_error(invoke("train", "--resume", output_dir), "training state version 1", "reads version 2",
                      "--overwrite")


def test_encode_decode_round_trip():
    value = {"state": {0: {"step": torch.tensor(3.0)}}, "betas": (0.9, 0.999), "groups": [{"lr": 0.1}],
             "score": float("-inf"), "none": None}
    tensors: dict[str, torch.Tensor] = {}
    document = json.loads(json.dumps(encode(value, tensors, "x")))
    decoded = decode(document, tensors)
    assert decoded["betas"] == (0.9, 0.999) and decoded["groups"] == [{"lr": 0.1}] and decoded["none"] is None
    assert list(decoded["state"]) == [0] and torch.equal(decoded["state"][0]["step"], torch.tensor(3.0))
    assert decoded["score"] == float("-inf")
