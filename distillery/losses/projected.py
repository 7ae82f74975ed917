"""A loss on a language model's logits computed from its last hidden states, a chunk of positions at a time, so the
``[positions, vocabulary]`` logits and their gradient exist for one chunk only, never for the whole batch.

For each chunk the output projection makes the chunk's logits, the loss is taken on them and its gradient with
respect to them is taken at once; that gradient is pushed through the projection (into the hidden states and the
projection's weight and bias) and the chunk's logits are dropped. The backward pass then only hands those gradients
on. The arithmetic is the same as projecting everything first (one projection forward, its two backward products);
what changes is the peak memory (a chunk's logits instead of the batch's, twice over with their gradient) and the
memory traffic. The same idea as Liger Kernel's fused linear cross-entropy, for any loss of a chunk's logits.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# loss_of_chunk(logits [c, V], rows: slice into the N positions) -> a scalar, the chunk's share of the loss; or that
# scalar and its gradient with respect to the logits [c, V], where the loss writes it out itself.
ChunkLoss = Callable[[torch.Tensor, slice], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def projected_loss(hidden: torch.Tensor, head: nn.Linear, loss_of_chunk: ChunkLoss,
                   chunk_size: int = 1024) -> torch.Tensor:
    """Σ over chunks of ``loss_of_chunk(head(hidden[rows]), rows)``: a scalar whose gradient reaches ``hidden``
    ``[N, H]`` and the head's weight ``[V, H]`` (and bias), as if the logits ``[N, V]`` had been made whole.

    ``loss_of_chunk`` must be a function of the chunk's logits alone as far as gradients go (targets it reads are
    constants); it may return ``(loss, gradient)`` with the gradient with respect to the logits written out, and
    autograd is then not asked. Raises ValueError for a chunk size below 1.

    Example::

        loss = projected_loss(states[mask], model.lm_head, lambda logits, rows: F.cross_entropy(
            logits, labels[rows], reduction="sum") / len(labels))
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return _ChunkedProjection.apply(hidden, head.weight, head.bias, loss_of_chunk, chunk_size)


class _ChunkedProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, loss_of_chunk, chunk_size):
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            states = hidden[rows]
            with torch.enable_grad():
                logits = nn.functional.linear(states, weight, bias).detach().requires_grad_()
                loss = loss_of_chunk(logits, rows)
                if isinstance(loss, tuple):
                    loss, grad_logits = loss
                else:
                    (grad_logits,) = torch.autograd.grad(loss, logits)
            total += loss.detach().float()
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), states.to(weight.dtype))
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(*(tensor for tensor in (grad_hidden, grad_weight, grad_bias) if tensor is not None))
        ctx.present = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_total if present else None for present in ctx.present]
        return (*grads, None, None)
