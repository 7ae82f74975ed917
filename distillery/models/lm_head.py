"""A causal language model as its body (inputs -> last hidden states) and its output projection, so a loss can
project the hidden states to the vocabulary a chunk of positions at a time (:mod:`distillery.losses.projected`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule


@dataclass(frozen=True)
class SplitModel:
    """``body(**inputs).last_hidden_state`` ``[B, L, H]`` is what ``head`` (an ``nn.Linear`` ``H -> V``) turns into
    the model's logits."""

    body: nn.Module
    head: nn.Linear

    def hidden_states(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.body(**inputs).last_hidden_state


def split_causal_lm(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> SplitModel | None:
    """``model`` split into body and head, or None when it cannot be: not a transformers causal LM, an output
    projection that is not a plain linear layer (LoRA on the head), a model sharded by FSDP (its head's weight is
    whole only inside the model's own forward), or logits that are more than the head's projection of the body's
    last hidden states (soft-capping, scaling). The last is checked on ``inputs`` (one batch's first row, without
    gradients, in eval mode), so whatever the architecture does, a split that is used gives the model's own
    logits."""
    if any(isinstance(part, FSDPModule) for part in model.modules()):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's inner model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    body = getattr(base, "base_model", base)
    if type(head) is not nn.Linear or body is base:
        return None
    split = SplitModel(body, head)
    return split if _same_logits(model, split, inputs) else None


@torch.no_grad()
def _same_logits(model: nn.Module, split: SplitModel, inputs: Mapping[str, Any]) -> bool:
    first = {name: value[:1] for name, value in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        whole = model(**first).logits.float()
        parts = split.head(split.hidden_states(first)).float()
    except (TypeError, AttributeError, ValueError):
        return False
    finally:
        model.train(was_training)
    scale = float(whole.abs().max()) + 1.0
    return whole.shape == parts.shape and bool((whole - parts).abs().max() <= 1e-3 * scale)
