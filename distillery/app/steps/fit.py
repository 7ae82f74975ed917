"""The fit step: train any method on batches with one optimiser and schedule, on one process or under torchrun."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from distillery.app.config import TrainConfig
from distillery.data import ArrayDataset, BatchIterator
from distillery.engine import BestEpoch, Trainer, build_optimizer, build_scheduler, compile_student, peer_record, resolve_device
from distillery.engine.distributed import setup_distributed
from distillery.engine.fsdp import shard_method
from distillery.engine.state_codec import load_changing_state
from distillery.errors import DataError
from distillery.messages import note
from distillery.methods import Method


@dataclass
class Result:
    """A trained model (its best-on-validation weights), its per-epoch history and best validation metrics.

    ``peers`` holds, by name, the models an online method trained beside the student, each a Result of
    its own: its best weights by its own validation accuracy, and its part of every epoch's record.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    peers: dict[str, "Result"] = field(default_factory=dict)


def as_batches(data: Any, batch_size: int, shuffle: bool, seed: int) -> Iterable:
    """An ArrayDataset becomes a seeded BatchIterator; a torch Dataset of samples a DataLoader over it (shuffled
    by a generator seeded with ``seed``); any re-iterable of batches (a DataLoader, a list) is used as is."""
    if isinstance(data, ArrayDataset):
        return BatchIterator(data, batch_size=batch_size, shuffle=shuffle, seed=seed)
    if isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=batch_size)
    if isinstance(data, torch.utils.data.Dataset):
        if not hasattr(data, "__len__"):
            raise DataError(f"the dataset {type(data).__name__} has no __len__; give it one, or wrap it in a DataLoader")
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                                           generator=torch.Generator().manual_seed(seed) if shuffle else None)
    if not hasattr(data, "__iter__") or isinstance(data, torch.Tensor):
        raise DataError(f"data must be an ArrayDataset, a torch Dataset or an iterable of (inputs, labels) batches, "
                        f"got {type(data).__name__}")
    if iter(data) is data:
        raise DataError("data is a one-shot iterator (a generator?); pass something iterable once per epoch, "
                        "such as a DataLoader or a list of batches")
    return data


def fit(method: Method, train_data: Any, val_data: Any, train: TrainConfig, *, seed: int = 0, device: str = "auto",
        progress: bool = True, best: BestEpoch = BestEpoch(), on_epoch_end=None, description: str = "train",
        checkpointer=None, resume=None) -> Result:
    """Train any Method as a run config's ``train:`` section says (optimiser, schedule, epochs, batch size,
    precision, compile, gradient clipping); how every run fits, config-driven or in memory.

    ``best`` chooses the best epoch by a validation metric (the task's). Under torchrun it trains data-parallel:
    ``train.batch_size`` (or the given loader's) is the global batch; with ``train.parallel: fsdp`` the
    method's models are sharded (:mod:`distillery.engine.fsdp`) and the returned models stay sharded.
    ``checkpointer`` (an :class:`distillery.engine.checkpointer.Checkpointer`) saves the full training state as
    training goes (under torchrun, give every process one: they stop and save together); ``resume`` (a state read
    with ``read_training_state``) continues from one.
    """
    context = setup_distributed(device).sharded(train.parallel)
    train_batches = context.shard(as_batches(train_data, train.batch_size, shuffle=True, seed=seed), training=True)
    val_batches = (context.shard(as_batches(val_data, max(train.batch_size, 512), shuffle=False, seed=seed),
                                 training=False) if val_data is not None else None)
    steps_per_epoch = _steps_per_epoch(train_batches, train.schedule)
    target = context.place(resolve_device(device))
    if context.fsdp:  # before moving (each device gets its shards only) and before the optimiser (it holds them)
        for line in shard_method(method, target, precision=train.precision, blocks=train.fsdp_blocks):
            if context.is_main:
                note(f"FSDP: {line}")
    method.to(target)
    if train.compile:
        compile_student(method)
    opt = build_optimizer(method.trainable_parameters(), train.optimizer, lr=train.lr,
                          weight_decay=train.weight_decay, momentum=train.momentum)
    scheduler = build_scheduler(opt, train.schedule, total_steps=train.epochs * steps_per_epoch)
    trainer = Trainer(method, opt, scheduler, epochs=train.epochs, device=target, progress=progress and context.is_main,
                      description=description, precision=train.precision, grad_clip=train.grad_clip,
                      distributed=context, best=best)
    fitted = trainer.fit(train_batches, val_batches, on_epoch_end=on_epoch_end, checkpointer=checkpointer,
                         resume=resume)
    load_changing_state(method.student, fitted.best_state)
    peers = {}
    for name, peer in method.peer_models().items():
        best_peer = fitted.peers[name]
        load_changing_state(peer, best_peer.state)
        peers[name] = Result(model=peer, history=[peer_record(record, name) for record in fitted.history],
                             metrics=best_peer.metrics, best_epoch=best_peer.epoch)
    return Result(model=method.student, history=fitted.history, metrics=fitted.best_metrics,
                  best_epoch=fitted.best_epoch, peers=peers)


def fit_method(method: Method, train_data: Any, val_data: Any = None, *, epochs: int = 10, lr: float = 1e-3,
               optimizer: str = "adamw", weight_decay: float = 5e-4, momentum: float = 0.9,
               schedule: str = "cosine", batch_size: int = 128, seed: int = 0, device: str = "auto",
               progress: bool = True, on_epoch_end=None, description: str = "train", precision: str = "fp32",
               compile: bool = False, grad_clip: float | None = None, checkpointer=None, resume=None,
               best: BestEpoch = BestEpoch()) -> Result:
    """Train any Method, with the train settings as keywords (the Python API); :func:`train` and :func:`distill` are
    this with a method chosen for you, and :func:`fit` the same with a ``train:`` section.

    ``precision="bf16"`` runs each step under bfloat16 autocast; ``compile=True`` compiles the student
    with torch.compile. Neither changes what is saved. ``grad_clip`` caps the gradients' global norm.
    ``best`` chooses the best epoch: by validation accuracy unless told otherwise (a language model:
    ``BestEpoch("val/perplexity", higher_is_better=False)``).
    """
    # Built without validation, as the keywords always were taken: a bad value fails where it is used, as before.
    train = TrainConfig.model_construct(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                                        momentum=momentum, schedule=schedule, batch_size=batch_size,
                                        precision=precision, compile=compile, grad_clip=grad_clip)
    return fit(method, train_data, val_data, train, seed=seed, device=device, progress=progress, best=best,
               on_epoch_end=on_epoch_end, description=description, checkpointer=checkpointer, resume=resume)


def _steps_per_epoch(batches: Iterable, schedule: str) -> int:
    # Per-step schedules must know the run's length up front; a constant one does not.
    try:
        return len(batches)
    except TypeError:
        if schedule == "constant":
            return 1
        raise DataError(f"the training data ({type(batches).__name__}) has no length, which the {schedule!r} "
                        "schedule needs; pass a sized DataLoader or list, or schedule='constant'") from None
