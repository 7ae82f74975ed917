"""Build a model from a spec dict: a zoo name or a user's "package.module:function"."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors.torch import save as safetensors_save
from torch import nn
from torch.distributed.tensor import DTensor

from distillery.errors import ConfigError, ModelError
from distillery.models.adapters import add_lora, lora_settings
from distillery.user_code import import_function, user_code
from distillery.models.huggingface import huggingface
from distillery.models.resnet import resnet
from distillery.models.text_transformers import causal_lm, sequence_classifier
from distillery.models.zoo import cnn, mlp
from distillery.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("mlp")(mlp)
MODELS.register("cnn")(cnn)
MODELS.register("resnet")(resnet)
MODELS.register("huggingface")(huggingface)
MODELS.register("causal_lm")(causal_lm)
MODELS.register("sequence_classifier")(sequence_classifier)

# Set from the data, never from the spec, for zoo models.
_DATA_ARGUMENTS = ("input_shape", "num_classes")


def build_model(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, *,
                adapters: bool = True) -> nn.Module:
    """Build the model that `spec` describes for inputs of `input_shape` and `num_classes` classes.

    `spec["name"]` is a registered name (`MODELS.names()`) or "package.module:function";
    the other keys are the builder's keyword arguments, except `lora`: LoRA adapters added through peft
    (:mod:`distillery.models.adapters`), unless `adapters` is False (a run adds them after init_from_teacher).
    Example: `build_model({"name": "mlp", "hidden": [64]}, (64,), 10)`.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelError(f"a model needs a name, e.g. model: {{name: mlp}} or a package.module:function; got {spec!r}")
    kwargs = dict(spec)
    lora = lora_settings(kwargs.pop("lora", None))
    model = _build(kwargs, input_shape, num_classes)
    return add_lora(model, lora) if lora is not None and adapters else model


def _build(kwargs: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    name = kwargs.pop("name")
    input_shape = tuple(input_shape)
    if ":" in name:
        return _build_user_model(name, kwargs, input_shape, num_classes)
    try:
        builder = MODELS.get(name)
    except ConfigError as error:
        raise ModelError(f"{error}, or 'package.module:function' for your own model") from None
    for key in _DATA_ARGUMENTS:
        if key in kwargs:
            raise ModelError(f"model {name!r}: {key} comes from the data; remove it from model:")
    _check_keywords(name, builder, kwargs, reserved=_DATA_ARGUMENTS)
    return builder(input_shape, num_classes, **kwargs)


def _check_keywords(
    name: str, builder: Callable[..., Any], kwargs: Mapping[str, Any], reserved: Sequence[str] = ()
) -> None:
    """Reject keys the builder does not take, naming the valid ones, before any TypeError deep inside."""
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [
        key
        for key, parameter in parameters.items()
        if key not in reserved
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelError(
                f"unknown key {key!r} for model {name!r}{hint}; valid keys: {', '.join(valid) or 'none'}"
            )


def _build_user_model(
    name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    function = import_function(name)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins and C extensions have none
        signature = None
    if signature is not None:
        _check_keywords(name, function, kwargs)
        # Pass the data's shape and classes only to functions that name them: a **kwargs
        # function (timm.create_model, say) would forward input_shape into a constructor.
        # A value in the spec wins, e.g. a teacher trained on more classes than the data has.
        data = {"input_shape": input_shape, "num_classes": num_classes}
        for key, value in data.items():
            if key in signature.parameters and key not in kwargs:
                kwargs[key] = value
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            raise ModelError(f"model {name!r}: {error}") from None
    with user_code(f"model factory {name!r}"):
        model = function(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable or frozen; tied weights count once.

    Example: `count_parameters(mlp((4,), 2, hidden=[3])) == 23`.
    """
    return sum(parameter.numel() for parameter in model.parameters())


def size_on_disk_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict (parameters and buffers) saved as safetensors.

    Example: `size_on_disk_bytes(mlp((4,), 2, hidden=[3]))` is 23 float32 values plus a small header.
    """
    state = model.state_dict()
    if any(isinstance(tensor, DTensor) for tensor in state.values()):
        return _sharded_size_bytes(model, state)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    for key, tensor in state.items():
        # Tied weights appear under several names but are stored once by safetensors' save_model.
        identity = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() > 0 and identity in seen:
            continue
        seen.add(identity)
        # A copy, because safetensors refuses tensors that share memory (views of one buffer).
        tensors[key] = tensor.detach().to("cpu", copy=True).contiguous()
    return len(safetensors_save(tensors))


def _sharded_size_bytes(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """:func:`size_on_disk_bytes` of a model sharded by FSDP (a collective: every process calls it). Each tensor is
    gathered whole; tied weights are told by parameter names, the same on every process (their shards are not)."""
    unique = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - unique
    tensors = {key: (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().to("cpu", copy=True)
               .contiguous() for key, tensor in state.items() if key not in aliases}
    return len(safetensors_save(tensors))
