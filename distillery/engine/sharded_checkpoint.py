"""A sharded training state on disk: ``torch.distributed.checkpoint`` with safetensors files, each process writing
and reading only its own shards (nothing is gathered).

``save_sharded`` writes ``<directory>/shard-0000<r>-model-00001-of-00001.safetensors``, one file a process, each
shard's place in the whole tensor in the file's own metadata. ``load_sharded`` reads them into sharded tensors of
the same shapes laid out the same way. Reading takes safetensors headers and tensors only: nothing is unpickled
(the default ``torch.distributed.checkpoint`` format keeps its index as a pickle, which is why it is not used).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from distillery.errors import CheckpointError


def save_sharded(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Every process writes its shards of ``tensors`` into ``directory`` (a collective: call it on every process,
    with the same keys). A plain tensor, the same on every process, is written once."""
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))


def load_sharded(template: dict[str, torch.Tensor], directory: Path) -> None:
    """Fill ``template``'s tensors, in place, from what :func:`save_sharded` wrote into ``directory`` (a
    collective). Raises CheckpointError, in one line, when the files are missing or hold other tensors."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is missing; the sharded training state is incomplete, start the run "
                              "again with --overwrite")
    try:
        dcp.load(template, storage_reader=HuggingFaceStorageReader(str(directory)))
    except (CheckpointException, RuntimeError, ValueError, KeyError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{directory} does not fit this run's sharded model or optimiser ({first_line[:200]}); "
                              "resume with the run's own config.yaml and as many processes") from None


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's state keyed by parameter names (its moments sharded like the parameters); a fresh
    optimiser's state is made first (one step of zero gradients at learning rate 0), so it can be loaded into."""
    return get_optimizer_state_dict(model, optimizer)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what :func:`optimizer_state` returned."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state)
