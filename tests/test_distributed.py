"""Data-parallel runs: sharding, loss weighting, what DDP wraps, and two processes matching one.

Two processes on gloo must end with the single-process weights up to float32 rounding: DDP adds the
shards' gradients in another order than one backward pass over the whole batch does, which moves
the last bits (about 1e-7 relative per step); over the runs here the largest difference measured was
6e-8, so the tolerance is atol 1e-6, rtol 1e-5. Leaving the unequal last shards (3 and 2 samples)
unweighted already moves weights by ~1e-3, and the per-step sample indices are compared exactly.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import distributed_worker
import pytest
import torch
from cli_helpers import assert_ok, invoke, run_config, write_yaml
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from distillery.data import ArrayDataset, BatchIterator
from distillery.engine.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    ShardedBatches,
    TrainableStep,
    setup_distributed,
)
from distillery.errors import ConfigError
from distillery.methods import Method, create_method
from distillery.models import build_model

REPOSITORY = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-6, 1e-5


def numbered_dataset(size: int) -> ArrayDataset:
    inputs = torch.arange(size, dtype=torch.float32).reshape(size, 1)
    return ArrayDataset(inputs, torch.arange(size) % 3, ["a", "b", "c"], "numbers")


def mlp(hidden=(8,)) -> nn.Module:
    return build_model({"name": "mlp", "hidden": list(hidden)}, (1, 8, 8), 10)


# ---------------------------------------------------------------- sharding and weighting, without processes


def test_the_shards_of_a_step_are_the_global_batch_and_a_small_last_batch_gets_stand_ins():
    batches = BatchIterator(numbered_dataset(50), 12, shuffle=True, seed=3)  # 4 batches of 12, one of 2
    shards = [ShardedBatches(batches, rank, 3, training=True) for rank in range(3)]
    for epoch in (1, 2):
        for shard in shards:
            shard.set_epoch(epoch)
        per_rank = [[(indices.tolist(), shard.share) for _, _, indices in shard] for shard in shards]
        batches.set_epoch(epoch)
        for step, (_, _, global_indices) in enumerate(batches):
            parts = [per_rank[rank][step] for rank in range(3)]
            if step < 4:
                assert [share for _, share in parts] == [(4, 12)] * 3
                assert sum((indices for indices, _ in parts), []) == global_indices.tolist()
            else:  # 2 samples for 3 processes: the third steps on a stand-in that weighs nothing
                assert parts == [([global_indices[0].item()], (1, 2)), ([global_indices[1].item()], (1, 2)),
                                 ([global_indices[0].item()], (0, 2))]
    assert len(shards[0]) == len(batches) == 5


def test_evaluation_shards_cover_every_sample_once():
    batches = BatchIterator(numbered_dataset(7), 512)
    seen = [indices for rank in range(4) for _, _, indices in ShardedBatches(batches, rank, 4, training=False)]
    assert torch.cat(seen).tolist() == list(range(7))
    assert [len(indices) for indices in seen] == [2, 2, 2, 1]


def test_weighted_shard_losses_average_to_the_mean_over_the_global_batch():
    # Five per-sample losses split 3 / 2 between two processes; DDP averages what each differentiates.
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    weighted = []
    for rank, shard in enumerate(losses.tensor_split(2)):
        holder = SimpleNamespace(share=(len(shard), len(losses)))
        loss, samples = DistributedContext(rank, 2).weighted(shard.mean(), holder, len(shard))
        weighted.append(loss)
        assert samples == len(shard)
    assert torch.stack(weighted).mean().item() == pytest.approx(20.0 / 5)  # (1+2+3+4+10) / 5, not (2 + 7) / 2
    stand_in = SimpleNamespace(share=(0, 1))
    assert DistributedContext(1, 2).weighted(torch.tensor(5.0), stand_in, 1) == (0.0, 0)


def test_the_global_batch_must_split_evenly_and_one_process_changes_nothing():
    batches = BatchIterator(numbered_dataset(20), 64)
    with pytest.raises(ConfigError, match="train.batch_size 64 is the global batch .* 3 processes; use 63 or 66"):
        DistributedContext(0, 3).shard(batches, training=True)
    assert isinstance(DistributedContext(0, 3).shard(batches, training=False), ShardedBatches)  # any split
    assert SINGLE_PROCESS.shard(batches, training=True) is batches
    method = create_method("supervised", mlp())
    assert SINGLE_PROCESS.wrap(method, torch.device("cpu")) == method.step
    assert SINGLE_PROCESS.weighted(torch.tensor(2.0), batches, 7) == (2.0, 7)


def test_a_loader_with_a_distributed_sampler_is_not_sharded_again():
    dataset = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    loader = DataLoader(dataset, batch_size=3, sampler=DistributedSampler(dataset, num_replicas=2, rank=1))
    assert DistributedContext(1, 2).shard(loader, training=True) is loader
    plain = DataLoader(dataset, batch_size=4)
    assert isinstance(DistributedContext(1, 2).shard(plain, training=True), ShardedBatches)


def test_ddp_wraps_the_student_and_peers_but_never_a_teacher():
    student, teacher = mlp(), mlp((32,))
    wrapped = TrainableStep(create_method("hinton", student, teacher))
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in student.parameters()}
    peer = mlp((4,))
    online = TrainableStep(create_method("online", student, teacher_model=peer))
    assert {id(p) for p in online.parameters()} == {id(p) for p in [*student.parameters(), *peer.parameters()]}


def test_a_trainable_parameter_outside_every_submodule_is_refused():
    class LooseScale(Method):
        def __init__(self, student):
            super().__init__(student)
            self.scale = nn.Parameter(torch.ones(()))

    with pytest.raises(RuntimeError, match="LooseScale holds trainable parameters outside its submodules"):
        TrainableStep(LooseScale(mlp()))


def test_without_torchrun_there_is_one_process_and_a_partial_environment_is_refused(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert setup_distributed("cpu") is SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE is set but RANK, LOCAL_RANK is not"):
        setup_distributed("cpu")


# ---------------------------------------------------------------- two real processes (gloo on CPU)


def assert_same_weights(single: dict[str, torch.Tensor], parallel: dict[str, torch.Tensor]) -> None:
    assert single.keys() == parallel.keys()
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], atol=ATOL, rtol=RTOL, msg=name)


@pytest.fixture(scope="module")
def distill_config(tmp_path_factory) -> Path:
    """A Hinton run on digits from a teacher trained here, with a last batch that two processes split 3 / 2."""
    directory = tmp_path_factory.mktemp("ddp")
    teacher = directory / "teacher"
    assert_ok(invoke("train", write_yaml(directory / "teacher.yaml", run_config(
        teacher, train={"epochs": 3, "batch_size": 64, "lr": 0.003}, data={"val_fraction": 0.15}))))
    return write_yaml(directory / "distill.yaml", run_config(
        directory / "single", model={"name": "mlp", "hidden": [16]}, data={"val_fraction": 0.15},
        train={"epochs": 3, "batch_size": 64, "lr": 0.003},
        distill={"teacher": str(teacher), "method": "hinton", "temperature": 2.0}))


@pytest.fixture(scope="module")
def two_processes(distill_config) -> tuple[Path, str]:
    """One torchrun launch of two processes (gloo): tests/distributed_worker.py; its output folder and stdout."""
    output_dir = distill_config.parent / "parallel"
    output_dir.mkdir()
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    environment.update(OMP_NUM_THREADS="1", DISTILLERY_CACHE=str(output_dir / "cache"),
                       PYTHONPATH=os.pathsep.join([str(REPOSITORY), environment.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPOSITORY / "tests" / "distributed_worker.py"), str(output_dir), str(distill_config)],
        env=environment, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr
    return output_dir, completed.stdout


def test_two_processes_split_every_batch_and_train_like_one(two_processes):
    output_dir, _ = two_processes
    weights, steps, history = distributed_worker.train_recording()
    ranks = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == len(steps) == 2 * 20  # ceil(1221 / 64) per epoch
    for step, global_batch in enumerate(steps):
        first, second = ranks[0]["steps"][step], ranks[1]["steps"][step]
        assert first + second == global_batch  # the same seeded order, cut in two
        assert (len(first), len(second)) == ((32, 32) if len(global_batch) == 64 else (3, 2))
    for rank in range(2):
        assert_same_weights(weights, load_file(output_dir / f"rank{rank}.safetensors"))
        parallel_history = ranks[rank]["history"]
        assert [r["val/accuracy"] for r in parallel_history] == [r["val/accuracy"] for r in history]
        for mine, theirs in zip(parallel_history, history):
            assert mine["train/loss"] == pytest.approx(theirs["train/loss"], rel=1e-5)


def test_no_native_thread_of_the_process_group_outlives_the_run(two_processes):
    """Gloo's threads alive at interpreter shutdown can abort a finished process (SIGABRT): none may be left."""
    output_dir, _ = two_processes
    for rank in range(2):
        threads = json.loads((output_dir / f"rank{rank}-threads-at-exit.json").read_text())
        if not threads:
            pytest.skip("this system has no /proc/self/task to list threads")
        assert not [name for name in threads if "gloo" in name], threads


def test_a_process_exits_cleanly_while_a_gloo_thread_still_calls_back_into_python():
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    environment.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPOSITORY), environment.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPOSITORY / "tests" / "exit_worker.py")], env=environment, capture_output=True, text=True, timeout=120)
    assert "terminate called" not in completed.stderr, completed.stderr[-2000:]
    assert completed.returncode == 0 and completed.stdout.count(" exits") == 2, completed.stderr[-2000:]


def test_torchrun_distills_with_two_processes_like_one(two_processes, distill_config, monkeypatch):
    output_dir, stdout = two_processes
    monkeypatch.setenv("DISTILLERY_CACHE", str(distill_config.parent / "cache-single"))
    assert_ok(invoke("distill", distill_config))
    assert stdout.count("test accuracy") == 1  # rank 0 reports; the other process prints nothing
    single, parallel = distill_config.parent / "single", output_dir / "distilled"
    assert_same_weights(load_file(single / "last.safetensors"), load_file(parallel / "last.safetensors"))
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in (single, parallel)]
    assert len(records[1]) == 3  # one writer: one line per epoch
    for mine, theirs in zip(records[1], records[0]):
        assert mine["val/accuracy"] == theirs["val/accuracy"]
        assert mine["train/kd"] == pytest.approx(theirs["train/kd"], rel=1e-5, abs=1e-7)
    evaluations = [json.loads((run / "evaluation.json").read_text()) for run in (single, parallel)]
    assert evaluations[1]["accuracy"] == evaluations[0]["accuracy"]
    # One teacher-output cache entry: rank 0 built it before the other process looked for it.
    assert sorted(path.suffix for path in (output_dir / "cache").iterdir()) == [".json", ".npy"]
