"""Training methods: each is a small class that turns a batch into one StepOutput."""
from distillery.methods.base import METHODS, Method, StepOutput
from distillery.methods.deep_supervision import DeepSupervision
from distillery.methods.factory import (
                                        create_method,
                                        method_accepts,
                                        method_default,
                                        method_uses_teacher_features,
                                        method_uses_teacher_logits,
)
from distillery.methods.features import AttentionTransfer, FeatureHints
from distillery.methods.function_matching import FunctionMatching
from distillery.methods.modern import DIST, DecoupledKD
from distillery.methods.online import MutualLearning, OnlineDistillation
from distillery.methods.soft_targets import HintonDistillation, LogitMatching
from distillery.methods.supervised import Supervised
from distillery.methods.token_kd import TokenDistillation

__all__ = [
    "AttentionTransfer",
    "DIST",
    "METHODS",
    "DecoupledKD",
    "DeepSupervision",
    "FeatureHints",
    "FunctionMatching",
    "HintonDistillation",
    "LogitMatching",
    "Method",
    "MutualLearning",
    "OnlineDistillation",
    "StepOutput",
    "Supervised",
    "TokenDistillation",
    "create_method",
    "method_accepts",
    "method_default",
    "method_uses_teacher_features",
    "method_uses_teacher_logits",
]
