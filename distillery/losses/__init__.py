"""Pure loss functions of tensors; methods compose them."""
from distillery.losses.logits import hard_label_cross_entropy, logit_mse, soft_target_kl
from distillery.losses.modern import decoupled_kd, dist_loss, standardize_logits

__all__ = [
    "decoupled_kd",
    "dist_loss",
    "hard_label_cross_entropy",
    "logit_mse",
    "soft_target_kl",
    "standardize_logits",
]
