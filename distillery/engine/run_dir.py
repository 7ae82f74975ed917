"""The files of one run directory (see docs/run-directory.md)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.atomic import atomic_write_text
from distillery.engine.progress import peer_record
from distillery.errors import RunExistsError
from distillery.models.checkpoint_files import FORMAT as CHECKPOINT_FORMAT
from distillery.models.checkpoint_files import save_checkpoint
from distillery.output_dir import check_claimable, claim_output_dir, is_claimable

# Written first into every run directory: what marks a folder as a run's, whose files a run may replace.
MARKER = ".distillery-run"
TOKENIZER_DIR = "tokenizer"
RUN_FILES = ("config.yaml", "metrics.jsonl", "model.safetensors", "model.json", "last.safetensors", "last.json",
             "evaluation.json")


class RunDirectory:
    """Creates a run directory and writes its files; refuses to replace a finished run unless told to.

    Example::

        run = RunDirectory("runs/student", overwrite=False)
        run.start(config_text)
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite

    @property
    def finished(self) -> bool:
        return (self.path / "model.json").is_file()

    def start(self, config_text: str) -> None:
        """Claim the directory for a new run (refusing a folder of the user's, a finished run unless
        ``overwrite``, an interrupted one that could be resumed) and write its config."""
        check_claimable(self.path, MARKER, "run", _written_before_the_marker)
        if self.finished and not self.overwrite:
            raise RunExistsError(
                f"{self.path} already holds a finished run; pass --overwrite to replace it or choose another output_dir"
            )
        if (self.path / "state" / "state.json").is_file() and not self.overwrite:
            raise RunExistsError(
                f"{self.path} holds an interrupted run with its training state saved; continue it with "
                f"--resume {self.path}, or pass --overwrite to start again"
            )
        claim_output_dir(self.path, MARKER, "run", _written_before_the_marker)
        try:
            self._clear_files()
            atomic_write_text(self.path / "config.yaml", config_text)
        except OSError as error:
            raise RunExistsError(f"cannot write to output_dir {self.path} ({error.strerror}); "
                                 "choose a directory you can write to") from None

    def is_ours(self) -> bool:
        """True when the directory is missing, empty, or a run's (see :func:`claim_output_dir`)."""
        return is_claimable(self.path, MARKER, _written_before_the_marker)

    def resume(self, history: list[dict[str, Any]], peers: list[str]) -> None:
        """Continue an unfinished run: its metrics become the saved state's history (an epoch logged after the
        last saved state is trained again, so it must not stay in the log twice)."""
        lines = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write_text(self.path / "metrics.jsonl", lines)
        for name in peers:
            text = "".join(json.dumps(peer_record(record, name)) + "\n" for record in history)
            atomic_write_text(self.peer(name).path / "metrics.jsonl", text)

    def _clear_files(self) -> None:
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        # A new run must never be resumed from an earlier run's training state, nor read its tokenizer.
        shutil.rmtree(self.path / "state", ignore_errors=True)
        shutil.rmtree(self.path / TOKENIZER_DIR, ignore_errors=True)
        # Only our own files go, so a folder of the user's inside peers/ survives.
        peers = self.path / "peers"
        for peer_dir in sorted(peers.iterdir() if peers.is_dir() else []):
            if peer_dir.is_dir():
                RunDirectory(peer_dir)._clear_files()
                if not any(peer_dir.iterdir()):
                    peer_dir.rmdir()

    def peer(self, name: str) -> "RunDirectory":
        """``peers/<name>/``: where a model trained beside the student keeps its checkpoint, metrics and evaluation."""
        directory = RunDirectory(self.path / "peers" / name)
        directory.path.mkdir(parents=True, exist_ok=True)
        return directory

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as stream:
            stream.write(json.dumps(record) + "\n")

    def save_model(self, stem: str, model: nn.Module, metadata: dict[str, Any],
                   state: dict[str, torch.Tensor] | None = None) -> Path:
        return save_checkpoint(self.path / stem, model, metadata, state=state)

    def save_tokenizer(self, tokenizer: Any) -> Path:
        """A language model's tokenizer in ``tokenizer/`` (``save_pretrained``), written beside and renamed into
        place, so the folder is whole or absent."""
        target = self.path / TOKENIZER_DIR
        temporary = self.path / (TOKENIZER_DIR + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        tokenizer.save_pretrained(str(temporary))
        shutil.rmtree(target, ignore_errors=True)
        temporary.rename(target)
        return target

    def write_evaluation(self, evaluation: dict[str, Any]) -> None:
        atomic_write_text(self.path / "evaluation.json", json.dumps(evaluation, indent=2))


def _written_before_the_marker(path: Path) -> bool:
    """A run directory from before the marker: a distillery model.json, or a saved training state."""
    if (path / "state" / "state.json").is_file():
        return True
    try:
        return json.loads((path / "model.json").read_text()).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
