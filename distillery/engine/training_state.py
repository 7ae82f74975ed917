"""The full training state of a run, saved so that an interrupted run continues exactly where it stopped.

``<run>/state/`` holds ``tensors-<n>.safetensors`` (the method's trainable modules, optimiser moments, the
best weights so far, every process's RNG states, the epoch's summed logs) and ``state.json`` (positions, schedules,
history, and the name of its tensors file). ``state.json`` is written last and atomically: it is the commit
marker, so a crash while saving leaves the previous complete state. Nothing is pickled or unpickled.
See docs/run-directory.md.
"""
from __future__ import annotations

import contextlib
import json
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distillery.atomic import atomic_write, atomic_write_text
from distillery.engine.trainer import EpochProgress, FitResult, PeerBest
from distillery.errors import CheckpointError, RunExistsError, TrainingInterrupted

if TYPE_CHECKING:
    from distillery.engine.trainer import Trainer

FORMAT = "distillery-training-state"
VERSION = 2  # 2: each process's RNG states and summed logs (``ranks``), and their number (``world_size``)
STATE_DIR = "state"
STATE_FILE = "state.json"
# How containers JSON has no form for are written: a tensor by its key in the safetensors file, a tuple,
# and a dict keyed by integers (an optimiser's per-parameter state).
TENSOR, TUPLE, INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"


def encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``value`` as JSON-ready data; every tensor in it moves to ``tensors`` under a key derived from ``key``.

    Example: ``encode({"w": torch.ones(2)}, tensors, "model") == {"w": {"__tensor__": "model/w"}}``
    """
    if isinstance(value, torch.Tensor):
        # A clone per tensor: safetensors refuses tensors that share storage (tied weights).
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(name, str) for name in value):
            return {name: encode(item, tensors, f"{key}/{name}") for name, item in value.items()}
        return {INT_KEYS: [[int(name), encode(item, tensors, f"{key}/{name}")] for name, item in value.items()]}
    if isinstance(value, tuple):
        return {TUPLE: [encode(item, tensors, f"{key}/{index}") for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [encode(item, tensors, f"{key}/{index}") for index, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"the training state cannot hold a {type(value).__name__} (at {key})")  # a bug, not a user error


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`. Example: ``decode(encode(state, tensors, "s"), tensors)`` equals ``state``."""
    if isinstance(value, list):
        return [decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {TENSOR}:
        if value[TENSOR] not in tensors:
            raise KeyError(value[TENSOR])
        return tensors[value[TENSOR]]
    if set(value) == {TUPLE}:
        return tuple(decode(item, tensors) for item in value[TUPLE])
    if set(value) == {INT_KEYS}:
        return {int(name): decode(item, tensors) for name, item in value[INT_KEYS]}
    return {name: decode(item, tensors) for name, item in value.items()}


def rng_states() -> dict[str, Any]:
    """Every random generator training may draw from: Python's, NumPy's, torch's CPU one and each CUDA device's."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    states = {"python": random.getstate(), "numpy": [name, keys.tolist(), position, has_gauss, cached],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def trainable_state(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The method's state without its frozen teachers: those are rebuilt from the config, unchanged."""
    prefixes = tuple(f"{name}." for name in getattr(method, "teacher_names", ()))
    return {key: value for key, value in method.state_dict().items() if not key.startswith(prefixes)}


def _result_payload(result: FitResult) -> dict[str, Any]:
    peers = {name: {"state": best.state, "epoch": best.epoch, "score": best.score, "metrics": best.metrics}
             for name, best in result.peers.items()}
    return {"history": result.history, "best_state": result.best_state, "best_epoch": result.best_epoch,
            "best_score": result.best_score, "best_metrics": result.best_metrics, "peers": peers}


def _result_from(payload: dict[str, Any]) -> FitResult:
    peers = {name: PeerBest(**best) for name, best in payload.pop("peers").items()}
    return FitResult(**payload, peers=peers)


@dataclass
class SavedState:
    """A training state read from ``<run>/state/``; :meth:`restore` puts it into a freshly built Trainer."""

    path: Path                      # the tensors file, named in errors
    document: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def epoch(self) -> int:
        return self.document["position"]["epoch"]

    @property
    def step(self) -> int:
        return self.document["position"]["step"]

    @property
    def world_size(self) -> int:
        """How many processes trained the run: each one's random generators are in the state."""
        return self.document["world_size"]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The epoch records up to the saved state (plain JSON: they hold no tensors)."""
        return self.document["payload"]["result"]["history"]

    def payload(self) -> dict[str, Any]:
        try:
            return decode(self.document["payload"], self.tensors)
        except KeyError as missing:
            raise CheckpointError(f"{self.path} lacks the tensor {missing}; the training state is damaged, "
                                  "start the run again with --overwrite") from None

    def restore(self, trainer: "Trainer") -> tuple[FitResult, int, EpochProgress | None]:
        """Load weights, optimiser, schedule, step count and RNG states into ``trainer``; returns the result so
        far, the epoch to continue with, and that epoch's progress (None: it starts from its first batch)."""
        self.check_world_size(trainer.distributed.world_size)
        payload, position = self.payload(), self.document["position"]
        if position["epochs"] != trainer.epochs:
            raise CheckpointError(f"{self.path} was saved by a run of {position['epochs']} epochs, not "
                                  f"{trainer.epochs}; resume with the run's own config.yaml")
        self._load_modules(trainer, payload)
        trainer.global_step = position["global_step"]
        own = payload["ranks"][trainer.distributed.rank]  # this process's generators and share of the epoch's logs
        set_rng_states(own["rng"])
        result = _result_from(payload["result"])
        if position["epoch_done"]:
            return result, position["epoch"] + 1, None
        progress = payload["progress"]
        return result, position["epoch"], EpochProgress(lr=progress["lr"], step=position["step"],
                                                        seen=own["seen"], totals=own["totals"])

    def check_world_size(self, world_size: int) -> None:
        """Refuse to continue on another number of processes: their random generators could not go on as saved."""
        if world_size != self.world_size:
            how = f"torchrun --nproc_per_node {self.world_size}" if self.world_size > 1 else "one process (no torchrun)"
            raise CheckpointError(f"{self.path} was saved by a run of {self.world_size} process(es), but this one has "
                                  f"{world_size}; resume with {how}, as the run started")

    def check_fits(self, method: torch.nn.Module, world_size: int = 1) -> None:
        """Refuse, before anything is written, a state saved for other modules (the config was edited) or for
        another number of processes."""
        self.check_world_size(world_size)
        expected = {key: tuple(value.shape) for key, value in trainable_state(method).items()}
        saved = {key: tuple(self.tensors[ref[TENSOR]].shape) if isinstance(ref, dict) and ref.get(TENSOR) in self.tensors
                 else None for key, ref in self.document["payload"]["model"].items()}
        if saved != expected:
            differing = sorted(key for key in expected.keys() | saved.keys() if expected.get(key) != saved.get(key))
            raise CheckpointError(f"{self.path} does not fit this run's model (it differs at {differing[:3]}); "
                                  "resume with the run's own config.yaml")

    def _load_modules(self, trainer: "Trainer", payload: dict[str, Any]) -> None:
        try:
            missing, unexpected = trainer.method.load_state_dict(payload["model"], strict=False)
            trainer.optimizer.load_state_dict(payload["optimizer"])
            if trainer.scheduler is not None:
                trainer.scheduler.load_state_dict(payload["scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise CheckpointError(f"{self.path} does not fit this run's model or optimiser ({first_line}); "
                                  "resume with the run's own config.yaml") from None
        prefixes = tuple(f"{name}." for name in getattr(trainer.method, "teacher_names", ()))
        missing = [key for key in missing if not key.startswith(prefixes)]
        if missing or unexpected:
            raise CheckpointError(f"{self.path} was saved for a different model (missing: {missing[:3]}, "
                                  f"unexpected: {unexpected[:3]}); resume with the run's own config.yaml")


def read_training_state(run_dir: str | Path) -> SavedState:
    """The saved state of an unfinished run, or a one-line error saying why there is none to resume.

    Example::

        saved = read_training_state("runs/student")
        result = trainer.fit(train_batches, val_batches, resume=saved)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory; --resume takes the output_dir of a started run")
    if (run_dir / "model.json").is_file():
        raise RunExistsError(f"{run_dir} holds a finished run; there is nothing to resume "
                             "(pass its config with --overwrite to train it again)")
    manifest = run_dir / STATE_DIR / STATE_FILE
    if not manifest.is_file():
        raise CheckpointError(f"{run_dir} has no saved training state ({manifest} is missing): it stopped before "
                              "its first checkpoint; start it again from its config with --overwrite")
    try:
        document = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest} is not valid JSON ({error}); start the run again with --overwrite") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("tensors"), str):
        raise CheckpointError(f"{manifest} is not a distillery training state; start the run again with --overwrite")
    if document.get("version") != VERSION:
        raise CheckpointError(f"{manifest} is training state version {document.get('version')}, this distillery "
                              f"reads version {VERSION}; start the run again with --overwrite")
    problem = _shape_problem(document)
    if problem:
        raise CheckpointError(f"{manifest} is not a complete training state ({problem}); start the run again "
                              "with --overwrite")
    tensors_path = manifest.parent / Path(document["tensors"]).name
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{tensors_path} is unreadable or corrupted ({error}); "
                              "start the run again with --overwrite") from None
    return SavedState(tensors_path, document, tensors)


# What a state.json must hold, by path, with the JSON types allowed there (see Checkpointer.save).
_REQUIRED = {("saves",): (int,), ("world_size",): (int,), ("position",): (dict,), ("position", "epoch"): (int,),
             ("position", "step"): (int,), ("position", "epoch_done"): (bool,), ("position", "global_step"): (int,),
             ("position", "epochs"): (int,), ("payload",): (dict,), ("payload", "model"): (dict,),
             ("payload", "optimizer"): (dict,), ("payload", "ranks"): (list,), ("payload", "result"): (dict,),
             ("payload", "result", "history"): (list,), ("payload", "progress"): (dict,)}


def _shape_problem(document: dict[str, Any]) -> str | None:
    """What a well-formed JSON document lacks to be a training state, or None."""
    for path, types in _REQUIRED.items():
        value: Any = document
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        # bool is an int in Python; a count given as true/false is still wrong.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            return f"{'.'.join(path)} is missing or not a {types[0].__name__}"
    if not 1 <= len(document["payload"]["ranks"]) == document["world_size"]:
        return "payload.ranks does not hold one entry per process"
    return None


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
        self._trainer: "Trainer | None" = None
        self._result: FitResult | None = None
        self._batches: Any = None

    @contextlib.contextmanager
    def watch(self, trainer: "Trainer", result: FitResult, batches: Iterable) -> Iterator[None]:
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
            print(f"{signal.Signals(number).name}: finishing the current step and saving the training state "
                  "(send it again to stop at once)", file=sys.stderr)

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
        rank 0 writes and returns state.json's path, the others return None.
        """
        trainer = self._trainer
        ranks = trainer.distributed.gather({"rng": rng_states(), "seen": progress.seen,
                                            "totals": {name: total.cpu() for name, total in progress.totals.items()}})
        self.saves += 1
        if not trainer.distributed.is_main:
            return None
        payload = {"model": trainable_state(trainer.method), "optimizer": trainer.optimizer.state_dict(),
                   "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
                   "ranks": ranks, "result": _result_payload(self._result), "progress": {"lr": progress.lr}}
        tensors: dict[str, torch.Tensor] = {}
        encoded = encode(payload, tensors, "state")
        name = f"tensors-{self.saves}.safetensors"
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.directory / name, lambda path: save_file(tensors, str(path)))
        document = {"format": FORMAT, "version": VERSION, "tensors": name, "saves": self.saves,
                    "world_size": trainer.distributed.world_size,
                    "position": {"epoch": epoch, "step": progress.step, "epoch_done": epoch_done,
                                 "global_step": trainer.global_step, "epochs": trainer.epochs},
                    "data_order": {"seed": getattr(self._batches, "seed", None), "epoch": epoch,
                                   "position": progress.step},
                    "payload": encoded}
        atomic_write_text(self.directory / STATE_FILE, json.dumps(document))
        for old in self.directory.glob("tensors-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.directory / STATE_FILE
