"""A language-model run's text beside its teacher's: the same prompt, continued by each."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillery.app.config.files import load_config
from distillery.app.tasks.token_data import load_language_teacher, teacher_entry
from distillery.data.conversations import chat_prompt, end_of_turn
from distillery.data.tokenizer import load_tokenizer, padding_id
from distillery.errors import CheckpointError
from distillery.models.checkpoint import load_model


# The tasks whose runs are causal language models.
LANGUAGE_MODEL_TASKS = ("language_model", "chat")


def generate_text(run_dir: str | Path, prompt: str, *, max_new_tokens: int = 40, temperature: float = 0.0,
                  seed: int = 0, teacher: bool = True, chat: bool = False) -> dict[str, str]:
    """The continuations of ``prompt`` by a finished language-model run's student and (``teacher``, when the run
    had one) its teacher, by name: greedy at ``temperature`` 0, else sampled at that temperature from ``seed``.

    ``chat``: ``prompt`` is a question, rendered as the user's turn with the run tokenizer's chat template, and each
    answer ends at the template's end-of-turn token (raises DataError for a tokenizer without a chat template).

    The teacher is the one the run's config.yaml names, loaded as a file from anyone: only our run directories,
    ``huggingface`` folders and ``gguf`` files, never a factory. Raises CheckpointError for a run that is not a
    finished language-model run. Example: ``generate_text("runs/lm/distilled", "In the beginning")["student"]``
    """
    run_dir = Path(run_dir)
    student, metadata = load_model(run_dir)
    if metadata.get("task") not in LANGUAGE_MODEL_TASKS or not (run_dir / "tokenizer").is_dir():
        raise CheckpointError(f"{run_dir} is not a finished language-model run (no tokenizer/ beside its model); "
                              "generate continues text with causal language models")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    models: dict[str, nn.Module] = {"student": student}
    if teacher and (run_dir / "config.yaml").is_file():
        config = load_config(run_dir / "config.yaml")
        if config.distill is not None and config.distill.teacher is not None:
            models = {"teacher": load_language_teacher(teacher_entry(config), allow_factories=set())[0], **models}
    stop = None
    if chat:
        prompt, stop = chat_prompt(tokenizer, prompt), end_of_turn(tokenizer)
    return {name: continue_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed, stop=stop) for name, model in models.items()}


@torch.no_grad()
def continue_text(model: nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int, temperature: float,
                  seed: int, stop: str | None = None) -> str:
    """``model``'s continuation of ``prompt`` (the new text only), ended at the first ``stop`` text when given (a
    chat template's end of turn: generation also stops there when it is one token)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    ends = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stop_ids = tokenizer(stop, add_special_tokens=False)["input_ids"] if stop else []
    if len(stop_ids) == 1:
        ends.append(stop_ids[0])
    output = model.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   pad_token_id=padding_id(tokenizer), eos_token_id=ends or None, use_cache=True,
                                   **sampling)
    new = output[0, ids.shape[1]:]
    if not stop:
        return tokenizer.decode(new, skip_special_tokens=True)
    # The end of turn may be a special token, which skip_special_tokens would hide: cut there first.
    answer = tokenizer.decode(new, skip_special_tokens=False).split(stop)[0]
    return answer.replace(tokenizer.eos_token, "") if tokenizer.eos_token else answer
