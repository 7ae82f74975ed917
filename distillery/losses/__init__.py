"""Pure loss functions of tensors; methods compose them."""
from distillery.losses.features import attention_map, attention_transfer, hint_mse, pool_to_common_size
from distillery.losses.logits import hard_label_cross_entropy, logit_mse, soft_target_kl
from distillery.losses.modern import decoupled_kd, dist_loss, standardize_logits
from distillery.losses.tokens import DIVERGENCES, token_divergence, token_loss
from distillery.losses.topk import teacher_top_k, top_k_divergence

__all__ = [
    "DIVERGENCES",
    "attention_map",
    "attention_transfer",
    "decoupled_kd",
    "dist_loss",
    "hard_label_cross_entropy",
    "hint_mse",
    "logit_mse",
    "pool_to_common_size",
    "soft_target_kl",
    "standardize_logits",
    "teacher_top_k",
    "token_divergence",
    "token_loss",
    "top_k_divergence",
]
