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
    greedy), up to ``max_new_tokens`` or the block's end; the mask counts the predictions of the sampled tokens, and
    there are no labels (the hard-label term has nothing to say about the student's own text).

    Sampling runs the whole block once per new token without a key-value cache: causal attention makes the
    positions after the one being written irrelevant, so blocks of different prompt lengths are sampled together.
    The draws come from torch's global generator, which a saved training state restores. Shapes are kept:
    ``input_ids`` ``[B, L]``, mask ``[B, L]``.
    """
    ids = batch.inputs["input_ids"].clone()
    size, length = ids.shape
    starts = prompt_lengths(batch, prompt_tokens)
    budget = length - int(starts.min()) if max_new_tokens is None else max_new_tokens
    was_training = student.training
    student.eval()
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
    student.train(was_training)
    index = torch.arange(length, device=ids.device)[None, :]
    ends = (starts + budget).clamp(max=length)
    # Prediction p is of token p + 1: it counts when token p + 1 was sampled.
    mask = (index + 1 >= starts[:, None]) & (index + 1 < ends[:, None])
    inputs = {"input_ids": ids}
    if "attention_mask" in batch.inputs:
        inputs["attention_mask"] = (index < ends[:, None]).long()
    return Batch(inputs, None, mask, batch.indices)
