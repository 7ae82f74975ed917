"""Losses between a student's and a teacher's intermediate features (FitNets hints, attention transfer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to_common_size(student_features: torch.Tensor,
                        teacher_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool whichever 4-D map is spatially larger down to the other's size.

    Pooling (never upsampling) keeps every value an average of real activations. When one
    map is larger in height and the other in width, each dimension goes to the smaller size.
    2-D features are returned unchanged.

    Example::

        student, teacher = pool_to_common_size(torch.randn(2, 8, 4, 4), torch.randn(2, 32, 2, 2))
        # student is now [2, 8, 2, 2]
    """
    if student_features.dim() != 4 or teacher_features.dim() != 4:
        return student_features, teacher_features
    size = (min(student_features.shape[2], teacher_features.shape[2]),
            min(student_features.shape[3], teacher_features.shape[3]))
    if tuple(student_features.shape[2:]) != size:
        student_features = F.adaptive_avg_pool2d(student_features, size)
    if tuple(teacher_features.shape[2:]) != size:
        teacher_features = F.adaptive_avg_pool2d(teacher_features, size)
    return student_features, teacher_features


def hint_mse(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """The FitNets hint loss: mean over all elements of (student − teacher)².

    Romero et al. 2015, "FitNets: Hints for Thin Deep Nets". The student's features must
    already have the teacher's shape (the method's adapter, the paper's regressor, does that).
    The paper writes ½‖·‖² summed; the mean used here is what the CIFAR-100 reference
    recipes (hint weight 100) were tuned with.

    Example::

        loss = hint_mse(adapter(student_features), teacher_features.detach())
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"hint shapes differ: student {tuple(student_features.shape)} "
                         f"vs teacher {tuple(teacher_features.shape)}; adapt the student's features first")
    return F.mse_loss(student_features, teacher_features, reduction="mean")


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention": the spatial attention of a feature map.

    Mean over channels of |F|^p, flattened per sample and L2-normalised: [B, C, H, W] -> [B, H·W].

    Example::

        attention = attention_map(torch.randn(2, 16, 4, 4))  # shape [2, 16], unit rows
    """
    if features.dim() != 4:
        raise ValueError(f"attention maps need [batch, channels, height, width] features, got {tuple(features.shape)}")
    spatial = features.abs().pow(p).mean(dim=1).flatten(start_dim=1)
    return F.normalize(spatial, p=2, dim=1)


def attention_transfer(student_features: torch.Tensor, teacher_features: torch.Tensor,
                       p: float = 2.0) -> torch.Tensor:
    """Attention transfer: mean over batch and positions of (attention_map(s) − attention_map(t))².

    The paper writes β/2 · Σ_layers ‖Q_s/‖Q_s‖₂ − Q_t/‖Q_t‖₂‖₂ with β = 1000 "divided by the
    number of elements in the attention map and batch size"; its official code squares the
    difference, takes this mean and multiplies by β/2 = 500. mdistiller, whose CIFAR-100
    recipe gives the reference AT weight 1000 (p = 2), multiplies this same mean by 1000,
    i.e. twice the official code's scale. Channel counts may differ; if spatial sizes differ,
    the larger features are adaptive-average-pooled to the smaller size before the maps.

    Example::

        loss = 1000.0 * attention_transfer(student_features, teacher_features.detach())
    """
    student_features, teacher_features = pool_to_common_size(student_features, teacher_features)
    difference = attention_map(student_features, p) - attention_map(teacher_features, p)
    return difference.pow(2).mean()
