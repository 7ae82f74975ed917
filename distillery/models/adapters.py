"""LoRA adapters through the ``peft`` library: a model spec's ``lora:`` trains low-rank adapters (and any modules it
names) while every other weight stays frozen.

``lora: {r, alpha, dropout, target_modules, modules_to_save}``: rank (8), scaling numerator (twice the rank), dropout
on the adapters' input (0), the module names or suffixes that get adapters (peft's default for the architecture when
left out, e.g. ``[q_proj, v_proj]`` for Llama; ``all-linear`` for every linear layer but the head), and modules
trained whole beside them. Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from distillery.errors import ConfigError, ModelError
from distillery.user_code import first_line

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "modules_to_save")


def lora_settings(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``spec`` checked: known keys, a rank of at least 1, a dropout in [0, 1). Raises ConfigError naming the key."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"model.lora is a mapping such as {{r: 8, target_modules: [q_proj, v_proj]}}, not {spec!r}")
    unknown = sorted(set(spec) - set(LORA_KEYS))
    if unknown:
        raise ConfigError(f"model.lora does not take {', '.join(unknown)}; it takes: {', '.join(LORA_KEYS)}")
    rank = spec.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"model.lora.r is the adapters' rank, a whole number of at least 1; got {rank!r}")
    dropout = spec.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.lora.dropout is in [0, 1); got {dropout!r}")
    return {"r": rank, "alpha": spec.get("alpha", 2 * rank), "dropout": float(dropout),
            "target_modules": spec.get("target_modules"), "modules_to_save": spec.get("modules_to_save")}


def add_lora(model: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """``model`` wrapped by peft with LoRA adapters as ``spec`` says (see :func:`lora_settings`); only the adapters
    and ``modules_to_save`` are trainable. Raises ConfigError without peft or for target modules the model lacks.

    Example: ``student = add_lora(student, {"r": 8, "target_modules": ["q_proj", "v_proj"]})``
    """
    settings = lora_settings(spec)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora needs the peft library: pip install 'distillery[lm]' (or `make lm-data`)"
                          ) from None
    config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=settings["target_modules"], modules_to_save=settings["modules_to_save"])
    try:
        return get_peft_model(model, config)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"model.lora cannot be added to this model ({first_line(error)}); name its linear layers "
                         "in model.lora.target_modules, e.g. [q_proj, v_proj], or all-linear") from None


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` carries peft adapters."""
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def adapter_summary(model: nn.Module) -> dict[str, Any]:
    """What a LoRA run trains: its trainable and total parameters, and the modules whose weights train whole."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    config = next(iter(model.peft_config.values()))
    targets = config.target_modules
    return {"method": "lora", "r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
            "modules_to_save": sorted(config.modules_to_save or []), "trainable_parameters": trainable,
            "parameters": total}


def describe_adapters(summary: dict[str, Any]) -> str:
    """One line for the run's notes: what LoRA trains, of how much."""
    share = summary["trainable_parameters"] / max(summary["parameters"], 1)
    whole = f", {', '.join(summary['modules_to_save'])} whole" if summary["modules_to_save"] else ""
    return (f"LoRA (rank {summary['r']}, alpha {summary['alpha']}) on {summary['target_modules']}{whole}: "
            f"{summary['trainable_parameters']:,} of {summary['parameters']:,} parameters trained ({share:.2%})")


def merged(model: nn.Module) -> nn.Module:
    """A copy of an adapted model with its adapters merged into the weights it wraps: a plain model again."""
    import copy

    return copy.deepcopy(model).merge_and_unload()
