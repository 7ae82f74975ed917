"""Losses between a student's logits and a teacher's logits or the labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: T² · KL(softmax(teacher/T) ‖ softmax(student/T)).

    Summed over classes and averaged over the batch ("batchmean"): averaging over classes
    too would shrink the term by the class count. The T² factor keeps the gradient's size
    independent of T, since the soft-target gradients scale as 1/T².

    Example::

        loss = soft_target_kl(student(x), teacher(x).detach(), temperature=4.0)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    per_sample = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)
    return per_sample.mean() * temperature**2


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching: mean over batch and classes of (student − teacher)².

    For zero-mean logits, ``soft_target_kl`` tends to half of this as T grows, which is
    why Hinton et al. call logit matching the high-temperature limit of distillation.

    Example::

        loss = logit_mse(student(x), teacher(x).detach())
    """
    return F.mse_loss(student_logits, teacher_logits, reduction="mean")


def hard_label_cross_entropy(
    student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy against the true labels at temperature 1 (never at the distillation T).

    Samples labelled -1 (hidden labels in a partly labelled transfer set) are left out and the
    mean is over the others; a batch with no labelled sample gives zero.

    Example::

        loss = hard_label_cross_entropy(student(x), y)
    """
    labelled = labels >= 0
    if not bool(labelled.all()):
        if not bool(labelled.any()):
            return student_logits.sum() * 0.0  # keeps the graph, so the total loss still backpropagates
        student_logits, labels = student_logits[labelled], labels[labelled]
    return F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
