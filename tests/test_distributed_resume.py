"""Resuming torchrun runs: two gloo processes stopped by SIGTERM, or broken by a SIGKILLed process, and resumed
with ``torchrun ... --resume RUN_DIR``, end bit-identical to an uninterrupted two-process run.

The model has dropout, and the last batch of each epoch splits unequally (7 and 6 samples), so from the
second epoch on each process's random generator is in its own state: restoring one process's generators
in both would change the dropout masks, and the weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error, invoke, write_yaml
from safetensors.torch import load_file
from test_resume import STEPS_PER_EPOCH, assert_same_run, step_config

from distillery.engine.distributed import SINGLE_PROCESS, DistributedContext

REPOSITORY = Path(__file__).resolve().parents[1]
EPOCHS = 2


def torchrun(*arguments: str | Path, **environment: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m distillery ARGUMENTS`` on CPU (gloo)."""
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPOSITORY), str(REPOSITORY / "tests")]),
               **environment)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "distillery", *map(str, arguments)], env=env, capture_output=True, text=True,
                          timeout=180)


def two_process_config(directory: Path) -> Path:
    """The resume tests' dropout MLP for two epochs on digits; a global batch of 64, 32 per process."""
    document = step_config(directory / "run")
    document["train"]["epochs"] = EPOCHS
    return write_yaml(directory / "run.yaml", document)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("uninterrupted")
    completed = torchrun("train", two_process_config(directory))
    assert completed.returncode == 0, completed.stderr
    return directory / "run"


def saved_position(run_dir: Path) -> dict:
    return json.loads((run_dir / "state" / "state.json").read_text())["position"]


def test_a_sigterm_stops_both_processes_after_the_same_step_and_a_killed_process_loses_only_steps(
        tmp_path, reference_run):
    """Stopped by SIGTERM, resumed and then broken by a SIGKILLed process, resumed again: bit-identical."""
    run_dir = tmp_path / "run"
    at = STEPS_PER_EPOCH + 9  # the 9th step of epoch 2
    # As torchrun forwards a signal to every process: here they catch it one step apart, rank 1 first.
    interrupted = torchrun("train", two_process_config(tmp_path),
                           DISTILLERY_TEST_SIGNAL_AT=f"{at}:SIGTERM:1,{at + 1}:SIGTERM:0")
    hint = f"resume with: torchrun --standalone --nproc_per_node 2 -m distillery train --resume {run_dir}"
    assert interrupted.stderr.count(hint) == 1, interrupted.stderr  # rank 0 says it, once
    assert "interrupted at epoch 2 step 9" in interrupted.stderr
    # Both processes exit with SIGTERM's code: neither was killed by torchrun nor failed in a collective.
    assert interrupted.returncode != 0 and interrupted.stderr.count("exitcode  : 143") == 2, interrupted.stderr
    assert interrupted.stderr.count("Traceback") == 1  # torchrun's own report of the failed processes
    state = json.loads((run_dir / "state" / "state.json").read_text())
    assert state["position"]["global_step"] == at and state["world_size"] == 2
    tensors = load_file(str(run_dir / "state" / state["tensors"]))
    assert not torch.equal(tensors["state/ranks/0/rng/torch"], tensors["state/ranks/1/rng/torch"]), \
        "both processes' generators are alike here, so this test could not tell whose were restored"
    assert_user_error(invoke("train", "--resume", run_dir), "saved by a run of 2 process(es), but this one has 1",
                      "torchrun --nproc_per_node 2")  # one process cannot go on with two processes' generators

    # Resumed, then rank 1 is killed at its 8th step (global step 38): the last state saved is step 35's.
    killed = torchrun("train", "--resume", run_dir, DISTILLERY_TEST_SIGNAL_AT="8:SIGKILL:1")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr
    assert saved_position(run_dir)["global_step"] == 35 and not (run_dir / "model.json").exists()

    resumed = torchrun("train", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference_run)


def test_a_finished_run_refused_by_rank_0_is_one_error_on_every_process(reference_run):
    """Rank 0 alone claims the run directory; its refusal must reach rank 1 before rank 1 enters DDP's collectives."""
    before = (reference_run / "model.safetensors").read_bytes()
    refused = torchrun("train", reference_run.parent / "run.yaml")
    assert refused.returncode != 0
    assert refused.stderr.count(f"error: {reference_run} already holds a finished run") == 2, refused.stderr
    assert "Connection closed" not in refused.stderr and "exitcode  : 2" in refused.stderr, refused.stderr
    assert (reference_run / "model.safetensors").read_bytes() == before


def test_the_resume_line_starts_as_many_processes(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert DistributedContext(0, 4).launcher() == "torchrun --standalone --nproc_per_node 4 -m distillery"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two machines: their torchrun options are the user's
    assert DistributedContext(0, 4).launcher() == "torchrun <the launch options, 4 processes in all> -m distillery"
    assert SINGLE_PROCESS.launcher() == "distillery"
    assert SINGLE_PROCESS.max_over_ranks(15, torch.device("cpu")) == 15 and SINGLE_PROCESS.gather("x") == ["x"]
