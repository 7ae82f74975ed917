"""A language-model run's text beside its teacher's: the same prompt, continued by each."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.app.config.files import load_config
from distillery.app.tasks.token_data import load_language_teacher, teacher_entry
from distillery.data.tokenizer import load_tokenizer, padding_id
from distillery.errors import CheckpointError
from distillery.models.checkpoint import load_model


def generate_text(run_dir: str | Path, prompt: str, *, max_new_tokens: int = 40, temperature: float = 0.0,
                  seed: int = 0, teacher: bool = True) -> dict[str, str]:
    """The continuations of ``prompt`` by a finished language-model run's student and (``teacher``, when the run
    had one) its teacher, by name: greedy at ``temperature`` 0, else sampled at that temperature from ``seed``.

    The teacher is the one the run's config.yaml names, loaded as a file from anyone: only our run directories,
    ``huggingface`` folders and ``gguf`` files, never a factory. Raises CheckpointError for a run that is not a
    finished language-model run. Example: ``generate_text("runs/lm/distilled", "In the beginning")["student"]``
    """
    run_dir = Path(run_dir)
    student, metadata = load_model(run_dir)
    if metadata.get("task") != "language_model" or not (run_dir / "tokenizer").is_dir():
        raise CheckpointError(f"{run_dir} is not a finished language-model run (no tokenizer/ beside its model); "
                              "generate continues text with causal language models")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    models: dict[str, nn.Module] = {"student": student}
    if teacher and (run_dir / "config.yaml").is_file():
        config = load_config(run_dir / "config.yaml")
        if config.distill is not None and config.distill.teacher is not None:
            models = {"teacher": load_language_teacher(teacher_entry(config), allow_factories=set())[0], **models}
    return {name: continue_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed) for name, model in models.items()}


@torch.no_grad()
def continue_text(model: nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int, temperature: float,
                  seed: int) -> str:
    """``model``'s continuation of ``prompt`` (the new text only)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    output = model.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   pad_token_id=padding_id(tokenizer), use_cache=True,
                                   **sampling)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
