"""The full training state of a run, saved so that an interrupted run continues exactly where it stopped.

``<run>/state/`` holds ``tensors-<n>.safetensors`` (the method's trainable modules, optimiser moments, the
best weights so far, every process's RNG states, the epoch's summed logs) and ``state.json`` (positions, schedules,
history, and the name of its tensors file). A sharded run (``train.parallel: fsdp``) keeps its weights, moments and
best weights in ``sharded-<n>/`` instead, each process's shards in a file of its own
(:mod:`distillery.engine.sharded_checkpoint`). ``state.json`` is written last and atomically: it is the commit
marker, so a crash while saving leaves the previous complete state. Nothing is pickled or unpickled.
See docs/run-directory.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from distillery.engine.progress import EpochProgress, FitResult, TrainingLoop
from distillery.engine.sharded_checkpoint import load_optimizer_state, load_sharded, optimizer_state
from distillery.engine.state_codec import (TENSOR, ShardedTensors, changing_state, decode, encode, frozen_keys,
                                          result_from, set_rng_states, trainable_state)
from distillery.errors import CheckpointError, RunExistsError

FORMAT = "distillery-training-state"
VERSION = 2  # 2: each process's RNG states and summed logs (``ranks``), and their number (``world_size``)
STATE_DIR = "state"
STATE_FILE = "state.json"


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

    @property
    def sharded(self) -> dict[str, Any] | None:
        """Where a sharded (FSDP) run's shards are and the student's whole shapes, or None."""
        return self.document.get("sharded")

    def payload(self, shards: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        try:
            return decode(self.document["payload"], self.tensors, shards)
        except KeyError as missing:
            raise CheckpointError(f"{self.path} lacks the tensor {missing}; the training state is damaged, "
                                  "start the run again with --overwrite") from None

    def restore(self, trainer: TrainingLoop) -> tuple[FitResult, int, EpochProgress | None]:
        """Load weights, optimiser, schedule, step count and RNG states into ``trainer``; returns the result so
        far, the epoch to continue with, and that epoch's progress (None: it starts from its first batch)."""
        self.check_world_size(trainer.distributed.world_size)
        payload = self._sharded_payload(trainer) if self.sharded else self.payload()
        position = self.document["position"]
        if position["epochs"] != trainer.epochs:
            raise CheckpointError(f"{self.path} was saved by a run of {position['epochs']} epochs, not "
                                  f"{trainer.epochs}; resume with the run's own config.yaml")
        self._load_modules(trainer, payload)
        trainer.global_step = position["global_step"]
        own = payload["ranks"][trainer.distributed.rank]  # this process's generators and share of the epoch's logs
        set_rng_states(own["rng"])
        result = result_from(payload["result"])
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

    def check_fits(self, method: torch.nn.Module, world_size: int = 1, sharded: bool = False) -> None:
        """Refuse, before anything is written, a state saved for other modules (the config was edited), for
        another number of processes, or sharded when the run is not (or the reverse)."""
        self.check_world_size(world_size)
        if sharded != bool(self.sharded):
            saved_as, now = ("fsdp", "ddp") if self.sharded else ("ddp", "fsdp")
            raise CheckpointError(f"{self.path} was saved by a run with train.parallel: {saved_as}, but this one "
                                  f"has {now}; resume with the run's own config.yaml")
        expected = {key: tuple(value.shape) for key, value in trainable_state(method).items()}
        if self.sharded:
            saved = {key: tuple(shape) for key, shape in self.sharded["shapes"].items()}
        else:
            saved = {key: tuple(self.tensors[ref[TENSOR]].shape)
                     if isinstance(ref, dict) and ref.get(TENSOR) in self.tensors else None
                     for key, ref in self.document["payload"]["model"].items()}
        if saved != expected:
            differing = sorted(key for key in expected.keys() | saved.keys() if expected.get(key) != saved.get(key))
            raise CheckpointError(f"{self.path} does not fit this run's model (it differs at {differing[:3]}); "
                                  "resume with the run's own config.yaml")

    def _sharded_payload(self, trainer: TrainingLoop) -> dict[str, Any]:
        """The payload with its sharded tensors read by every process, each its own shards, into tensors laid out
        like the run's: its weights (read in place), a fresh optimiser's moments and room for the best weights."""
        method = trainer.method
        best = self.document["payload"]["result"].get("best_state")
        live = {"model": trainable_state(method), "optimizer": optimizer_state(method, trainer.optimizer),
                "result": {"best_state": None if best is None else
                           {key: torch.empty_like(value) for key, value in changing_state(method.student).items()}}}
        shards = ShardedTensors()
        encode(live, {}, "state", shards)
        load_sharded(shards, self.path.parent / Path(self.sharded["directory"]).name)
        return self.payload(shards)

    def _load_modules(self, trainer: TrainingLoop, payload: dict[str, Any]) -> None:
        try:
            missing, unexpected = trainer.method.load_state_dict(payload["model"], strict=False)
            if self.sharded:
                load_optimizer_state(trainer.method, trainer.optimizer, payload["optimizer"])
            else:
                trainer.optimizer.load_state_dict(payload["optimizer"])
            if trainer.scheduler is not None:
                trainer.scheduler.load_state_dict(payload["scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise CheckpointError(f"{self.path} does not fit this run's model or optimiser ({first_line}); "
                                  "resume with the run's own config.yaml") from None
        prefixes = tuple(f"{name}." for name in getattr(trainer.method, "teacher_names", ()))
        frozen = frozen_keys(trainer.method)  # never saved: rebuilt from the config, unchanged
        missing = [key for key in missing if not key.startswith(prefixes) and key not in frozen]
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
    sharded = document.get("sharded")
    if sharded is not None and not (isinstance(sharded, dict) and isinstance(sharded.get("directory"), str)
                                    and isinstance(sharded.get("shapes"), dict)):
        return "sharded is not a directory and the student's shapes"
    return None
