"""One run on many processes: rank and world size from torchrun's environment, DDP over the trainable modules.

Under ``torchrun`` every process builds the same data, models and method from the same seed; then

* each global batch (``train.batch_size``) is cut into one contiguous shard per process, so the shards of
  a step together are exactly the batch a single process would train on;
* the trainable part of the method (student, adapters, heads, peers) is wrapped in one
  ``DistributedDataParallel`` module; teachers stay frozen copies outside it. With ``train.parallel: fsdp``
  (:attr:`DistributedContext.fsdp`) the models are sharded instead (:mod:`distillery.engine.fsdp`), and every
  process runs a forward for every evaluation batch too (each forward is a collective);
* train and validation sums are added over the processes, so every process logs the same numbers;
* only rank 0 writes files; :meth:`DistributedContext.main_first` lets it build a shared file (the
  teacher-output cache) before the others read it.

Without ``WORLD_SIZE`` > 1 in the environment nothing here does anything: :data:`SINGLE_PROCESS`.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from distillery.data.batch import Batch, as_batch
from distillery.engine.device import resolve_device
from distillery.errors import ConfigError, DistilleryError

if TYPE_CHECKING:
    from distillery.methods.base import Method

Result = TypeVar("Result")
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is among how many; every collective a run needs goes through it.

    Example::

        context = setup_distributed("auto")      # under torchrun: joins the process group
        batches = context.shard(BatchIterator(train, 128, shuffle=True), training=True)
        if context.is_main:
            save(...)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's number on its own machine: its GPU
    fsdp: bool = False  # the models are sharded (FSDP2) rather than replicated (DDP)

    def sharded(self, parallel: str) -> "DistributedContext":
        """This context for ``train.parallel``: ``fsdp`` shards the models when there are several processes."""
        return replace(self, fsdp=parallel == "fsdp" and self.active)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on: with several processes, ``cuda`` means its own GPU."""
        if self.active and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    def check_global_batch(self, batch_size: int) -> None:
        """Refuse a global batch that does not split into equal shards."""
        if self.active and batch_size % self.world_size:
            lower = max(batch_size // self.world_size, 1) * self.world_size
            raise ConfigError(
                f"train.batch_size {batch_size} is the global batch and must divide evenly among {self.world_size} "
                f"processes; use {lower} or {lower + self.world_size}")

    def shard(self, batches: Iterable, *, training: bool) -> Iterable:
        """This process's share of every batch; a DataLoader with a DistributedSampler is sharded already."""
        if not self.active or isinstance(getattr(batches, "sampler", None), DistributedSampler):
            return batches
        size = getattr(batches, "batch_size", None)
        if training and isinstance(size, int):
            self.check_global_batch(size)
        return ShardedBatches(batches, self.rank, self.world_size, training=training, lockstep=self.fsdp)

    def wrap(self, method: "Method", device: torch.device) -> Callable[..., Any]:
        """What a training step calls: ``method.step`` (also for sharded models, whose gradients FSDP reduces), or,
        with several processes, its DDP-wrapped trainable part."""
        if not self.active or self.fsdp:
            return method.step
        return DistributedDataParallel(TrainableStep(method), device_ids=[device.index] if device.type == "cuda" else None)

    def weighted(self, loss: torch.Tensor, batches: Iterable, batch_size: int) -> tuple[torch.Tensor, int]:
        """The loss to differentiate and the samples this process contributes to the global batch.

        DDP averages the processes' gradients. A loss that is a mean over this shard's n samples, scaled by
        n · world_size / global, averages to the mean over the whole global batch also when the last
        batch splits unequally (or leaves a process a zero-weight stand-in sample).
        """
        share = getattr(batches, "share", None)
        if not self.active or share is None:
            return loss, batch_size
        samples, global_size = share
        return loss * (samples * self.world_size / global_size), samples

    def sum_over_ranks(self, values: dict[str, Any], device: torch.device) -> dict[str, float]:
        """Each value added over all processes (one collective), as Python floats."""
        names = sorted(values)
        stacked = torch.stack([torch.as_tensor(values[name], dtype=torch.float64, device=device) for name in names])
        if self.active:
            dist.all_reduce(stacked)
        return dict(zip(names, stacked.tolist()))

    def max_over_ranks(self, value: int, device: torch.device) -> int:
        """The largest of the processes' ``value`` (one collective of one number), the same on every process."""
        if not self.active:
            return value
        largest = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return int(largest.item())

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (sent pickled between the run's own processes), in rank order, on every one."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def launcher(self) -> str:
        """The command that starts this run's processes again: ``distillery``, or torchrun with as many processes."""
        if not self.active:
            return "distillery"
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if per_machine == self.world_size:
            return f"torchrun --standalone --nproc_per_node {self.world_size} -m distillery"
        return f"torchrun <the launch options, {self.world_size} processes in all> -m distillery"

    def main_only(self, work: Callable[[], None]) -> None:
        """``work()`` on rank 0 alone; a user error it raises is raised on every process.

        Without that, the other processes would go on into the next collective and break there, with gloo's
        "connection closed by peer" traceback, once rank 0 had exited with the error.
        """
        if not self.active:
            work()
            return
        failure = None
        if self.is_main:
            try:
                work()
            except DistilleryError as error:
                failure = (type(error).__name__, str(error))
        failure = self.gather(failure)[0]
        if failure is not None:
            kinds = {kind.__name__: kind for kind in DistilleryError.__subclasses__()
                     if kind.__init__ is DistilleryError.__init__}  # those made from a message alone
            raise kinds.get(failure[0], DistilleryError)(failure[1])

    def main_first(self, work: Callable[[], Result]) -> Result:
        """``work()`` on rank 0 first, then on each other machine's first process, then on the rest.

        What the first call writes (the teacher-output cache) the later ones find and read, whether or
        not the machines share a file system, and no two processes write the same file at once.
        """
        if not self.active:
            return work()
        turns = (self.rank == 0, self.rank != 0 and self.local_rank == 0, self.local_rank != 0)
        result = None
        for mine in turns:
            if mine:
                result = work()
            self.barrier()
        return result


SINGLE_PROCESS = DistributedContext()


class ShardedBatches:
    """Every batch of ``batches``, cut into ``world_size`` contiguous shards; this process gets shard ``rank``.

    The order comes from ``batches`` (seeded, the same on every process), so the shards of one step
    together are the single-process batch. ``share`` is (samples, global batch size) of the last shard.
    A training shard left empty by a small last batch is that batch's first sample with weight zero
    (every process must step, for DDP); an empty evaluation shard is skipped, or, with ``lockstep`` (sharded
    models: every process must run every forward), that sample with nothing counted (labels -1, mask off).

    Example::

        shards = ShardedBatches(BatchIterator(train, 128, shuffle=True), rank=1, world_size=4, training=True)
    """

    def __init__(self, batches: Iterable, rank: int, world_size: int, *, training: bool,
                 lockstep: bool = False) -> None:
        self.batches, self.rank, self.world_size, self.training = batches, rank, world_size, training
        self.lockstep = lockstep
        self.share = (0, 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        for batch in map(as_batch, self.batches):
            global_size = batch.size
            # The same contiguous cut tensor_split makes: the first (size mod world) shards get one more.
            bounds = torch.arange(global_size).tensor_split(self.world_size)[self.rank]
            samples = len(bounds)
            if samples == 0:
                if not self.training and not self.lockstep:
                    continue
                shard = batch.rows(slice(0, 1))
                if not self.training:
                    shard = uncounted(shard)
            else:
                shard = batch.rows(slice(int(bounds[0]), int(bounds[-1]) + 1))
            self.share = (samples, global_size)
            yield shard


def uncounted(batch: Batch) -> Batch:
    """``batch`` with nothing counted: every label -1 and the mask off (a forward for a sharded model's sake)."""
    labels = torch.full_like(batch.labels, -1) if batch.labels is not None else None
    mask = torch.zeros_like(batch.mask) if batch.mask is not None else None
    return replace(batch, labels=labels, mask=mask)


class TrainableStep(nn.Module):
    """The trainable part of a method as one module whose forward is a training step: what DDP wraps.

    Its submodules are the method's children that hold trainable parameters (student, adapters, heads,
    peers). Teachers are frozen, so they are left out: DDP neither broadcasts nor synchronises them.
    """

    def __init__(self, method: "Method") -> None:
        super().__init__()
        self.parts = nn.ModuleDict({name: child for name, child in method.named_children()
                                    if any(parameter.requires_grad for parameter in child.parameters())})
        # A plain attribute, not a submodule: registered, the method would bring its teachers into DDP.
        self.__dict__["method"] = method
        covered = {id(parameter) for parameter in self.parameters()}
        if any(id(parameter) not in covered for parameter in method.trainable_parameters()):
            raise RuntimeError(f"{type(method).__name__} holds trainable parameters outside its submodules; "
                               "DDP would not synchronise them")

    def forward(self, batch: Batch):
        return self.method.step(batch)


def setup_distributed(device: str = "auto") -> DistributedContext:
    """This process's context: joins torchrun's process group (gloo on CPU, nccl on CUDA) the first time.

    Without ``WORLD_SIZE`` > 1 in the environment it is :data:`SINGLE_PROCESS` and nothing is initialised.

    Example::

        context = setup_distributed(config.device)
        print(f"process {context.rank} of {context.world_size}")
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE_PROCESS
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start several processes with "
                          "torchrun, which sets all of them")
    context = DistributedContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                                 int(os.environ["LOCAL_RANK"]))
    target = context.place(resolve_device(device))
    if target.type == "cuda":
        torch.cuda.set_device(target)
    # DDP's constructor imports torch._dynamo. Imported after the process group exists, it holds the group in a way
    # destroy_process_group does not release (measured with torch 2.13: gloo's worker and socket threads stay
    # alive), so those native threads run on into interpreter shutdown, where one can abort the process
    # ("terminate called without an active exception") at the end of a finished run. Imported first, it holds
    # nothing, and destroying the group at exit joins every one of its threads while Python is still whole.
    import torch._dynamo  # noqa: F401
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    atexit.register(end_distributed)
    return context


def end_distributed() -> None:
    """Destroy the process group (joining its native threads); at exit, and by a program done with torchrun."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """False only in a process of a torchrun launch other than rank 0: the ones that print nothing."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
