"""Export a language-model or text-classifier run as a Hugging Face folder that plain ``transformers`` loads offline:
safetensors weights, config, tokenizer and chat template, verified by loading the folder back."""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Collection

import torch

from distillery.atomic import atomic_write_text
from distillery.compress.exported import ExportResult
from distillery.data.tokenizer import load_tokenizer
from distillery.errors import ConfigError, ModelError
from distillery.models.adapters import is_adapted, merged
from distillery.models.checkpoint import load_model
from distillery.models.text_transformers import load_transformer
from distillery.output_dir import check_claimable

MARKER = ".distillery-huggingface-export"
VERIFY_ROWS, VERIFY_LENGTH = 4, 32


def export_huggingface(checkpoint: str | Path, output: str | Path | None, tolerance: float,
                       allow_factories: Collection[str] = (), adapters: bool = False) -> ExportResult:
    """Write the run's model (the student only) with ``save_pretrained`` and its tokenizer beside it, load the folder
    back with ``transformers`` and compare logits on seeded token ids; returns an ExportResult.

    A LoRA run is written with its adapters merged into the weights (a plain model), or with ``adapters`` as the
    adapters alone (peft's ``adapter_model.safetensors`` and ``adapter_config.json``), verified by loading them with
    peft onto the run's frozen weights.

    ``output`` (default ``<run>/huggingface``) must be new, empty or an earlier export: nothing of the user's is
    replaced, and nothing is written unless the reloaded model matches within ``tolerance`` (absolute, on logits).
    Raises ConfigError for a run that is not a transformers model with its tokenizer.
    """
    run_dir = Path(checkpoint)
    model, metadata = load_model(run_dir, allow_factories=allow_factories)
    kind = (metadata.get("architecture") or {}).get("name")
    if kind not in ("causal_lm", "sequence_classifier") or not (run_dir / "tokenizer").is_dir():
        raise ConfigError(f"{run_dir} is not a language-model or text-classifier run (a transformers model with its "
                          "tokenizer/); --format huggingface exports those, onnx or pt2 the others")
    if adapters and not is_adapted(model):
        raise ConfigError(f"{run_dir} trained no adapters (no model.lora), so there are none to export alone; "
                          "leave out --adapters")
    target = Path(output) if output is not None else run_dir / ("adapters" if adapters else "huggingface")
    check_claimable(target, MARKER, "Hugging Face export")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))  # renamed into place when verified
    try:
        model.config.use_cache = True  # trained without; whoever loads it generates
        saved = model if adapters or not is_adapted(model) else merged(model)
        saved.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        difference = _reloaded_difference(model, staging, kind, len(tokenizer), adapters)
        if not difference <= tolerance:  # written so a NaN fails too
            raise ModelError(f"the Hugging Face folder of {run_dir} loads back with logits up to {difference:.3g} "
                             f"from the run's, over the tolerance {tolerance:g}; nothing was written")
        atomic_write_text(staging / MARKER, "distillery Hugging Face export\n")
        if target.exists():
            shutil.rmtree(target)  # an earlier export of ours (check_claimable), replaced whole
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    weights = sum(file.stat().st_size for file in target.glob("*.safetensors"))
    return ExportResult(path=target, format="huggingface", max_abs_diff=difference, tolerance=tolerance,
                        samples=VERIFY_ROWS, parameters=sum(p.numel() for p in model.parameters()),
                        size_bytes=weights)


@torch.no_grad()
def _reloaded_difference(model: torch.nn.Module, folder: Path, kind: str, vocabulary: int, adapters: bool) -> float:
    if adapters:
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(copy.deepcopy(model).unload(), str(folder)).eval()
    else:
        reloaded, _ = load_transformer(folder, kind)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocabulary, model.config.vocab_size), (VERIFY_ROWS, VERIFY_LENGTH), generator=generator)
    expected = model.eval()(input_ids=ids).logits
    return float((reloaded(input_ids=ids).logits - expected).abs().max())
