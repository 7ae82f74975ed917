"""On-policy batches for language-model distillation (GKD, Agarwal et al. 2024): the student continues each block's
prompt by sampling, and the teacher is then asked about the student's own text, not only about the corpus."""
from __future__ import annotations

import torch
from torch import nn

from distillery.data.batch import Batch, model_logits


def prompt_lengths(batch: Batch, prompt_tokens: int) -> torch.Tensor:
    """Each block's prompt: the tokens before its first counted prediction (a prompt/completion pair's prompt), or,
    where every prediction counts (packed text), its first ``prompt_tokens``. int64 ``[B]``, at least 1."""
    mask = batch.mask
    length = batch.inputs["input_ids"].shape[1]
    if mask is None or bool(mask[:, 0].all()):
        return torch.full((batch.size,), min(max(prompt_tokens, 1), length), dtype=torch.long, device=batch.device)
    first = torch.where(mask.any(dim=1), mask.float().argmax(dim=1), torch.full_like(mask[:, 0], length - 1,
                                                                                     dtype=torch.long))
    return (first + 1).clamp(1, length)  # prediction p reads tokens 0..p, so the prompt is tokens 0..first


@torch.no_grad()
def student_continuations(student: nn.Module, batch: Batch, *, prompt_tokens: int, max_new_tokens: int | None,
                          temperature: float) -> Batch:
    """``batch`` with each block's text after its prompt replaced by the student's samples (at ``temperature``; 0:
    greedy), up to ``max_new_tokens``, the block's end, or the student's end-of-turn token (its config's
    ``eos_token_id``: a chat model's turn ends there, and nothing after it counts); the mask counts the predictions
    of the sampled tokens, and there are no labels (the hard-label term has nothing to say about the student's own
    text). Shapes are kept: ``input_ids`` ``[B, L]``, mask ``[B, L]``.

    A transformers model samples with its key-value cache (``generate``, the prompts left-padded to one length); any
    other model runs the whole block once per new token, which causal attention makes correct. The draws come from
    torch's global generator, which a saved training state restores.
    """
    ids = batch.inputs["input_ids"].clone()
    length = ids.shape[1]
    starts = prompt_lengths(batch, prompt_tokens)
    budget = min(length - int(starts.min()), length if max_new_tokens is None else max_new_tokens)
    was_training = student.training
    student.eval()
    try:
        sample = _sample_with_cache if hasattr(student, "generate") else _sample_without_cache
        ends = sample(student, ids, starts, budget, temperature)
    finally:
        student.train(was_training)
    index = torch.arange(length, device=ids.device)[None, :]
    # Prediction p is of token p + 1: it counts when token p + 1 was sampled.
    mask = (index + 1 >= starts[:, None]) & (index + 1 < ends[:, None])
    inputs = {"input_ids": ids}
    if "attention_mask" in batch.inputs:
        inputs["attention_mask"] = (index < ends[:, None]).long()
    return Batch(inputs, None, mask, batch.indices)


def _sample_with_cache(student: nn.Module, ids: torch.Tensor, starts: torch.Tensor, budget: int,
                       temperature: float) -> torch.Tensor:
    """Writes the samples into ``ids`` in place; returns where each row's sampled text ends (exclusive)."""
    from transformers import GenerationConfig

    size, length = ids.shape
    width = int(starts.max())
    end_of_turn = getattr(getattr(student, "generation_config", None), "eos_token_id", None)
    pad = end_of_turn[0] if isinstance(end_of_turn, list) else (end_of_turn if end_of_turn is not None else 0)
    prompts, attention = ids.new_full((size, width), pad), ids.new_zeros((size, width))
    for row, start in enumerate(starts.tolist()):
        prompts[row, width - start:], attention[row, width - start:] = ids[row, :start], 1
    # Every setting given, so a pretrained model's own generation defaults (top_k 50, penalties) change nothing.
    drawing = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else \
        {"do_sample": False}
    settings = GenerationConfig(max_new_tokens=budget, eos_token_id=end_of_turn, pad_token_id=pad, use_cache=True,
                                **drawing)
    sampled = student.generate(prompts, attention_mask=attention, generation_config=settings)[:, width:]
    ends = starts.clone()
    stops = set(end_of_turn if isinstance(end_of_turn, list) else [end_of_turn]) - {None}
    for row, start in enumerate(starts.tolist()):
        tokens = sampled[row, : length - start].tolist()
        written = next((at + 1 for at, token in enumerate(tokens) if token in stops), len(tokens))
        ids[row, start: start + written] = sampled[row, :written]
        ends[row] = start + written
    return ends


def _sample_without_cache(student: nn.Module, ids: torch.Tensor, starts: torch.Tensor, budget: int,
                          temperature: float) -> torch.Tensor:
    """Writes the samples into ``ids`` in place, one forward pass of the whole block per new token."""
    size, length = ids.shape
    rows = torch.arange(size, device=ids.device)
    for step in range(budget):
        positions = starts + step  # where each row's next token goes
        writing = positions < length
        if not bool(writing.any()):
            break
        logits = model_logits(student, {"input_ids": ids})[rows, (positions - 1).clamp(max=length - 1)].float()
        if temperature > 0:
            tokens = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1).squeeze(1)
        else:
            tokens = logits.argmax(dim=-1)
        ids[rows[writing], positions[writing]] = tokens[writing]
    return (starts + budget).clamp(max=length)
