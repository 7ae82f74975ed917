"""Sharding a method's models across torchrun's processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

With ``train.parallel: fsdp`` every process holds 1/N of the student's parameters, gradients and optimiser state,
and 1/N of each frozen teacher; a block's parameters are gathered for its forward (and backward) and freed after.
The unit gathered at once is a *block*:

* a Hugging Face model's blocks are the modules whose class its ``_no_split_modules`` names (its transformer
  layers: ``LlamaDecoderLayer``, ``GPT2Block``); a peft (LoRA) model's, those of the model it wraps;
* ``train.fsdp_blocks`` names block classes for any model that has them (a model with none of them keeps its
  Hugging Face blocks); without blocks a model is one unit (its parameters, gradients and optimiser state are
  still sharded, but its forward gathers it whole);
* what is left (embeddings, final norm, output layer) is the model's root unit.

Each trainable module a method adds beside the student (FitNets' regressors, projections) is a unit of its own;
one held in a ModuleList or ModuleDict, one unit an item. On a GPU with ``train.precision: bf16`` the parameters
are gathered and used in bfloat16 while the sharded master weights and the gradient reductions stay float32;
on CPU everything is float32.

Every forward of a sharded model is a collective: every process must run the same forwards in the same order.
So methods whose processes would diverge (a student writing its own text, peers trained beside the student) are
refused in one line.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from distillery.errors import ConfigError

if TYPE_CHECKING:
    from distillery.methods.base import Method


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP shards ``module`` or any module inside it."""
    return any(isinstance(part, FSDPModule) for part in module.modules())


def shard_method(method: "Method", device: torch.device, *, precision: str = "fp32",
                 blocks: Iterable[str] | None = None) -> list[str]:
    """Shard the student, every teacher and every trainable module beside them, in place; before the optimiser is
    built (it must see the sharded parameters). Returns one line per model saying how it was cut.

    Raises ConfigError, naming the method, for one whose processes would not run the same forwards.
    """
    refusal = method.fsdp_refusal()
    if refusal is None and method.peer_models():
        refusal = "it trains peer models beside the student, each validated and saved whole"
    if refusal is not None:
        raise ConfigError(f"method {method.name or type(method).__name__} cannot run with train.parallel: fsdp "
                          f"({refusal}); use parallel: ddp")
    named = tuple(blocks) if blocks is not None else ()
    models = {name: child for name, child in method.named_children()
              if (name == "student" or name in method.teacher_names) and any(True for _ in child.parameters())}
    plan = {name: _blocks(model, named) for name, model in models.items()}  # decided before anything is sharded
    found = {type(module).__name__ for model in models.values() for module in model.modules()}
    if named and not found.intersection(named):
        raise ConfigError(f"train.fsdp_blocks {list(named)} names no module of the student or a teacher; their "
                          f"classes include: {', '.join(sorted(found)[:12])}")
    # FSDP warns whenever a sharded model returns a view (hidden states do). Only an in-place change of such an
    # output would lose gradients, and no method makes one: tests/test_fsdp.py checks a two-process sharded run's
    # weights against one process's, hidden-state matching included.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    policy = mixed_precision(device, precision)
    # One process per device; the shards go to the device (the models are built on CPU, whole, then sharded).
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    described = []
    for name, child in method.named_children():
        if name in models:
            described.append(f"{name}: {_shard_model(child, *plan[name], policy, mesh)}")
        elif name not in method.teacher_names:  # a teacher without parameters (targets all cached) stays as it is
            for part in _items(child):
                fully_shard(part, mesh=mesh, mp_policy=policy)
    return described


def mixed_precision(device: torch.device, precision: str) -> MixedPrecisionPolicy:
    """bf16 parameters and compute with float32 reductions on a GPU asked for bf16; float32 otherwise."""
    if device.type == "cuda" and precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def block_classes(model: nn.Module) -> tuple[str, ...]:
    """The class names of ``model``'s transformer blocks as Hugging Face declares them (``_no_split_modules``), also
    through a peft wrapper; empty for other models."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    declared = getattr(base, "_no_split_modules", None) or ()
    return tuple(sorted(declared))


def _blocks(model: nn.Module, named: tuple[str, ...]) -> tuple[list[nn.Module], str]:
    """``model``'s blocks: those of the classes ``named`` (train.fsdp_blocks) where it has any, else those its
    Hugging Face class declares; and their class names."""
    def of(classes: Iterable[str]) -> list[nn.Module]:
        return [module for module in model.modules() if module is not model and type(module).__name__ in classes]

    units = of(named) or of(block_classes(model))
    return units, ", ".join(sorted({type(unit).__name__ for unit in units}))


def _shard_model(model: nn.Module, units: list[nn.Module], kinds: str, policy: MixedPrecisionPolicy,
                 mesh: DeviceMesh) -> str:
    whole = type(model).__name__
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    # FSDP keeps a root unit gathered after its forward, for the backward that follows at once; a frozen teacher has
    # no backward, so its root (embeddings, output layer: the largest unit of a big vocabulary) would stay whole.
    frozen = not any(parameter.requires_grad for parameter in model.parameters())
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True if frozen else None)
    if not units:
        return f"{whole} as one unit (name its blocks in train.fsdp_blocks to gather one at a time)"
    return f"{len(units)} blocks ({kinds}) and the rest of {whole}"


def _items(module: nn.Module) -> Iterator[nn.Module]:
    """What a method calls: each item of a ModuleList or ModuleDict, else the module itself."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        for item in module.children():
            yield from _items(item)
    elif any(parameter.requires_grad for parameter in module.parameters()):
        yield module


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s whole state dict on CPU: gathered from every process's shards (a collective: call it on every
    process) onto rank 0, where it is returned; the other processes get an empty dict. An unsharded module's
    ``state_dict()`` as it is."""
    if not is_sharded(module):
        return module.state_dict()
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local_bytes(tensors: Iterable[Any]) -> int:
    """Bytes this process holds of ``tensors``: a sharded tensor's local shard, a plain tensor whole."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total
