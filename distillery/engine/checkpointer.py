"""Saving the training state as training goes, and stopping cleanly on SIGINT/SIGTERM."""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors.torch import save_file

from distillery.atomic import atomic_write, atomic_write_text
from distillery.engine.progress import EpochProgress, FitResult, TrainingLoop
from distillery.engine.sharded_checkpoint import optimizer_state, save_sharded
from distillery.engine.state_codec import ShardedTensors, encode, result_payload, rng_states, trainable_state
from distillery.engine.training_state import FORMAT, STATE_FILE, VERSION
from distillery.errors import TrainingInterrupted
from distillery.messages import logger


class Checkpointer:
    """Saves the training state every ``every_steps`` optimiser steps and after every epoch, and turns SIGINT
    and SIGTERM into a clean stop: the current step finishes, the state is saved, TrainingInterrupted is raised.

    Under torchrun every process has one: each catches the signal torchrun forwards to it, after every step
    the processes agree (one all-reduce of one number) to stop if any caught one, all of them send rank 0
    their random generators' states, rank 0 writes the state, and every process raises the same
    TrainingInterrupted once it is written.

    Example::

        checkpointer = Checkpointer("runs/student/state", every_steps=100, resume_hint="distillery train --resume runs/student")
        trainer.fit(train_batches, val_batches, checkpointer=checkpointer)
    """

    def __init__(self, directory: str | Path, *, every_steps: int | None = None, resume_hint: str,
                 saves: int = 0) -> None:
        self.directory = Path(directory)
        self.every_steps = every_steps
        self.resume_hint = resume_hint
        self.saves = saves  # numbers each tensors file, so a new one never replaces the committed one
        self.signal: int | None = None
        self._trainer: TrainingLoop | None = None
        self._result: FitResult | None = None
        self._batches: Any = None

    @contextlib.contextmanager
    def watch(self, trainer: TrainingLoop, result: FitResult, batches: Iterable) -> Iterator[None]:
        """While training: know what to save, and catch SIGINT/SIGTERM (main thread only, as Python requires)."""
        self._trainer, self._result, self._batches = trainer, result, batches
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {number: signal.signal(number, self._request_stop)
                        for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            # Under torchrun the first process to exit makes torchrun send SIGTERM to the others: once the state
            # is saved, a process that stops anyway ignores it and exits with the agreed code.
            ignore = self.signal is not None and trainer.distributed.active
            for number, handler in previous.items():
                signal.signal(number, signal.SIG_IGN if ignore else handler)
            self._trainer = self._result = self._batches = None

    def _request_stop(self, number: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signal = number
        if self._trainer is None or self._trainer.distributed.is_main:
            logger.warning(f"{signal.Signals(number).name}: finishing the current step and saving the training "
                           "state (send it again to stop at once)")

    def after_step(self, epoch: int, progress: EpochProgress) -> None:
        self._agree_on_stopping()
        every = self.every_steps is not None and self._trainer.global_step % self.every_steps == 0
        if every or self.signal is not None:
            self.save(epoch, progress, epoch_done=False)
        self._stop_if_asked(epoch, progress.step)

    def after_epoch(self, epoch: int, progress: EpochProgress) -> None:
        self._agree_on_stopping()  # a signal may have come during validation
        self.save(epoch, progress, epoch_done=True)
        self._stop_if_asked(epoch, progress.step)

    def _agree_on_stopping(self) -> None:
        """Every process takes the highest signal number any process caught (none: 0), so all stop after the
        same step with the same exit code, however the forwarded signals fell between their steps."""
        trainer = self._trainer
        self.signal = trainer.distributed.max_over_ranks(self.signal or 0, trainer.device) or None

    def _stop_if_asked(self, epoch: int, step: int) -> None:
        if self.signal is not None:
            # No process leaves before rank 0 has written the state: torchrun stops the others when one exits.
            self._trainer.distributed.barrier()
            raise TrainingInterrupted(f"interrupted at epoch {epoch} step {step}; resume with: {self.resume_hint}",
                                      exit_code=128 + self.signal)

    def save(self, epoch: int, progress: EpochProgress, *, epoch_done: bool) -> Path | None:
        """Write a tensors file, then commit it by writing state.json; older tensors files are removed after.

        Called on every process: each sends rank 0 its RNG states and its share of the epoch's summed logs;
        rank 0 writes and returns state.json's path, the others return None. Sharded models (FSDP) are saved
        without gathering: every process writes its shards of the weights, moments and best weights into
        ``sharded-<n>/``, and rank 0 the rest.
        """
        trainer = self._trainer
        sharded = trainer.distributed.fsdp
        ranks = trainer.distributed.gather({"rng": rng_states(), "seen": progress.seen,
                                            "totals": {name: total.cpu() for name, total in progress.totals.items()}})
        self.saves += 1
        if not trainer.distributed.is_main and not sharded:
            return None
        optimizer = (optimizer_state(trainer.method, trainer.optimizer) if sharded
                     else trainer.optimizer.state_dict())
        payload = {"model": trainable_state(trainer.method), "optimizer": optimizer,
                   "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
                   "ranks": ranks, "result": result_payload(self._result), "progress": {"lr": progress.lr}}
        tensors: dict[str, torch.Tensor] = {}
        shards = ShardedTensors() if sharded else None
        encoded = encode(payload, tensors, "state", shards)
        name = f"tensors-{self.saves}.safetensors"
        if shards is not None:
            save_sharded(shards, self.directory / f"sharded-{self.saves}")  # every process its own shards
        if not trainer.distributed.is_main:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.directory / name, lambda path: save_file(tensors, str(path)))
        document = {"format": FORMAT, "version": VERSION, "tensors": name, "saves": self.saves,
                    "world_size": trainer.distributed.world_size,
                    "position": {"epoch": epoch, "step": progress.step, "epoch_done": epoch_done,
                                 "global_step": trainer.global_step, "epochs": trainer.epochs},
                    "data_order": {"seed": getattr(self._batches, "seed", None), "epoch": epoch,
                                   "position": progress.step},
                    "payload": encoded}
        if shards is not None:
            document["sharded"] = {"directory": f"sharded-{self.saves}",
                                   "shapes": {key: list(value.shape) for key, value in payload["model"].items()}}
        atomic_write_text(self.directory / STATE_FILE, json.dumps(document))
        for old in [*self.directory.glob("tensors-*.safetensors"), *self.directory.glob("sharded-*")]:
            if old.name not in (name, f"sharded-{self.saves}"):
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        return self.directory / STATE_FILE
