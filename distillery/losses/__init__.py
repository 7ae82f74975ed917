"""Pure loss functions of tensors; methods compose them."""
from distillery.losses.logits import hard_label_cross_entropy, logit_mse, soft_target_kl

__all__ = ["hard_label_cross_entropy", "logit_mse", "soft_target_kl"]
