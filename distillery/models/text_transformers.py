"""Hugging Face transformers for text (causal language models and sequence classifiers): teachers read offline
from a folder or a GGUF file, students built as smaller configs of a teacher's family, and the map that starts a
student from its teacher.

A model is the ``transformers`` model itself: called with ``input_ids`` (and ``attention_mask``), its output's
``.logits`` are ``[B, L, V]``. Nothing is fetched (offline switches, ``local_files_only``), no remote code is
trusted, and a folder's weights are read from safetensors only (a ``pytorch_model.bin`` is a pickle).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from distillery.data.tokenizer import offline
from distillery.errors import ConfigError, ModelError
from distillery.models.init_from import initialize_from_teacher
from distillery.user_code import first_line

# Keys of a loaded config that describe where it came from or how it was stored, not the architecture: a student
# built from a GGUF teacher's config is a plain float32 model of its own.
_PROVENANCE = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "architectures",
               "dtype", "torch_dtype")


def _where(path: Path) -> tuple[Path, dict[str, Any]]:
    """The folder and the keyword arguments that make transformers read ``path`` (a folder or a .gguf file)."""
    if path.suffix == ".gguf" and path.is_file():
        missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
        if missing:
            raise ModelError(f"reading {path} needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}"
                             ": run `make lm-data`, or pip install 'distillery[lm]'")
        return path.parent, {"gguf_file": path.name}
    if path.is_dir() and (path / "config.json").is_file():
        return path, {"use_safetensors": True}
    raise ModelError(f"{path} is neither a .gguf file nor a folder with config.json (written by save_pretrained)")


def config_of(path: str | Path) -> dict[str, Any]:
    """The architecture config of the model at ``path`` (a folder or a .gguf file) as a JSON-ready dict."""
    offline()
    from transformers import AutoConfig

    folder, options = _where(Path(path))
    options.pop("use_safetensors", None)
    try:
        settings = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False, **options)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"cannot read the config of {path} ({first_line(error)})") from None
    return architecture_config(settings)


def architecture_config(settings: Any) -> dict[str, Any]:
    """A transformers config as plain JSON data, without the keys that say where it was stored."""
    document = json.loads(settings.to_json_string(use_diff=False))
    return {key: value for key, value in document.items() if key not in _PROVENANCE}


def causal_lm(input_shape: Sequence[int], num_classes: int, *, config: dict[str, Any] | None = None,
              base: str | None = None, init_from_base: bool = False, **overrides: Any) -> nn.Module:
    """A freshly initialised causal LM: the config dict ``config`` (with ``model_type``) or the config of the model at
    ``base`` (a folder or a .gguf file), changed by ``overrides`` (e.g. ``num_hidden_layers: 6``), with a vocabulary of
    ``num_classes``. ``input_shape`` is ``[L]``, the block length (kept below the model's positions).
    ``init_from_base`` starts it from the base model's weights (:func:`every_kth_block_map`): a student that starts
    from its teacher, also when it is then trained on text alone, as a fair baseline for a distilled one.

    Raises ModelError for a config transformers cannot build. Example::

        student = causal_lm((128,), 49152, base="teachers/smollm2.gguf", num_hidden_layers=6)
    """
    return _transformer("causal_lm", input_shape, {"vocab_size": int(num_classes)}, config, base, init_from_base,
                        overrides)


def sequence_classifier(input_shape: Sequence[int], num_classes: int, *, config: dict[str, Any] | None = None,
                        base: str | None = None, init_from_base: bool = False, **overrides: Any) -> nn.Module:
    """A freshly initialised transformer text classifier (``AutoModelForSequenceClassification``: an encoder such as
    BERT, or a decoder such as Llama, which classifies from its last token that is not padding) of ``num_classes``
    classes, built like :func:`causal_lm`; ``input_shape`` is ``[L]``, the tokens a text is cut or padded to.

    Example: ``student = sequence_classifier((64,), 7, base="runs/kjv/teacher_hf", num_hidden_layers=1)``
    """
    return _transformer("sequence_classifier", input_shape, {"num_labels": int(num_classes)}, config, base,
                        init_from_base, overrides)


def _transformer(kind: str, input_shape: Sequence[int], head: dict[str, Any], config: dict[str, Any] | None,
                 base: str | None, init_from_base: bool, overrides: dict[str, Any]) -> nn.Module:
    offline()
    from transformers import AutoConfig

    if (base is None) == (config is None):
        raise ModelError(f"a {kind} model needs exactly one of base (a model folder or .gguf file, whose config is "
                         "shrunk by the other keys) or config (a dict with model_type)")
    document = config_of(base) if base is not None else dict(config)
    document.update(overrides, use_cache=False, **head)
    if kind == "sequence_classifier":
        document.pop("id2label", None), document.pop("label2id", None)  # num_labels decides them
        # A decoder classifies from its last token that is not padding, so it must know the padding token.
        document.setdefault("pad_token_id", document.get("eos_token_id"))
    try:
        settings = AutoConfig.for_model(**document)
        model = _auto_class(kind).from_config(settings, dtype=torch.float32)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelError(f"cannot build a {kind} from {base or config} ({first_line(error)})") from None
    positions = getattr(settings, "max_position_embeddings", None) or getattr(settings, "n_positions", None)
    if positions is not None and input_shape and int(input_shape[0]) > positions:
        raise ModelError(f"the blocks have {input_shape[0]} positions but the model takes at most {positions}; lower "
                         "data.block_length")
    if init_from_base:
        if base is None:
            raise ModelError("init_from_base needs base: the model whose weights the new one starts from")
        pretrained, _ = load_transformer(base, kind)
        initialize_from_teacher(model, pretrained, every_kth_block_map(model, pretrained))
    return model


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification


def load_causal_lm(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained causal LM at ``path`` (a ``save_pretrained`` folder with safetensors weights, or a .gguf file,
    dequantised to float32) in eval mode, and its metadata: ``{"architecture": {"name": "causal_lm", "config":
    ...}, "num_classes": vocabulary}``. Raises ModelError for anything else.

    Example: ``teacher, metadata = load_causal_lm("teachers/SmolLM2-135M-Instruct.Q4_1.gguf")``
    """
    return load_transformer(path, "causal_lm")


def load_transformer(path: str | Path, kind: str) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained ``kind`` model (causal_lm or sequence_classifier) at ``path``, as :func:`load_causal_lm`."""
    offline()
    folder, options = _where(Path(path))
    try:
        model = _auto_class(kind).from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                                  dtype=torch.float32, **options)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"transformers cannot load {path} as a {kind} ({first_line(error)}); give a "
                         "save_pretrained folder with safetensors weights, or a .gguf file") from None
    model.config.use_cache = False
    config = architecture_config(model.config)
    classes = config["vocab_size"] if kind == "causal_lm" else model.config.num_labels
    return model.eval(), {"architecture": {"name": kind, "config": config}, "num_classes": int(classes)}


def block_list_path(model: nn.Module) -> str:
    """The module path of a transformer's list of blocks (``model.layers``, ``transformer.h``): the ModuleList
    holding ``config.num_hidden_layers`` modules. Raises ModelError when there is none."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name
    raise ModelError(f"{type(model).__name__} has no list of {count} blocks; give distill.init_layer_map")


def every_kth_block_map(student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    """A layer map starting a shallower student from its teacher (DistilBERT's "one layer in two", generalised):
    everything outside the blocks by name (embeddings, final norm, output head), and student block i from teacher
    block round(i · (T − 1) / (S − 1)), so the first and last blocks are kept and the rest spread evenly.

    Example: 6 student blocks of a 30-block teacher take blocks 0, 6, 12, 17, 23, 29.
    """
    student_blocks, teacher_blocks = block_list_path(student), block_list_path(teacher)
    count, teacher_count = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    if count > teacher_count:
        raise ModelError(f"the student has {count} blocks and the teacher only {teacher_count}; a student starts "
                         "from its teacher with as many blocks or fewer")
    picks = [round(index * (teacher_count - 1) / (count - 1)) if count > 1 else 0 for index in range(count)]
    layer_map = {"": ""}  # everything by name; the block entries below are longer, so they win
    layer_map.update({f"{student_blocks}.{index}": f"{teacher_blocks}.{pick}" for index, pick in enumerate(picks)})
    return layer_map


@torch.no_grad()
def check_packed_attention(model: nn.Module, who: str) -> None:
    """Refuse, naming ``who``, a model whose attention crosses from one packed sequence into the next: the second of
    two sequences packed in one row (positions restarting at 0) must give the logits it gives alone. Raises
    ConfigError. Example: ``check_packed_attention(student, "the student")``"""
    vocabulary = int(getattr(model.config, "vocab_size", 2))
    ids = torch.randint(0, vocabulary, (1, 8), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    was_training = model.training
    model.eval()
    packed = model(input_ids=ids, position_ids=positions).logits[0, 4:]
    alone = model(input_ids=ids[:, 4:]).logits[0]
    model.train(was_training)
    if not torch.allclose(packed, alone, atol=1e-4):
        raise ConfigError(f"{who} ({type(model).__name__}) attends across packed conversations (its attention does not "
                          "follow position_ids); set data.pack: false")
