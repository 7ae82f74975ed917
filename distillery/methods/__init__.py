"""Training methods: each is one file with a small class that turns a batch into one StepOutput, its own options
and what it needs, registered by name where it is defined (see :mod:`distillery.methods.create`)."""
from distillery.methods.attention import AttentionTransfer
from distillery.methods.base import METHODS, BuildContext, Method, MethodOptions, Needs, StepOutput
from distillery.methods.create import build_method, create_method, method_class, method_names, refusal_for_data
from distillery.methods.deep_supervision import DeepSupervision
from distillery.methods.dist import DIST
from distillery.methods.dkd import DecoupledKD
from distillery.methods.fitnet import FeatureHints
from distillery.methods.function_matching import FunctionMatching
from distillery.methods.hinton import HintonDistillation
from distillery.methods.logit_mse import LogitMatching
from distillery.methods.mutual import MutualLearning
from distillery.methods.online import OnlineDistillation
from distillery.methods.supervised import Supervised
from distillery.methods.token_kd import TokenDistillation

__all__ = [
    "AttentionTransfer",
    "BuildContext",
    "DIST",
    "METHODS",
    "DecoupledKD",
    "DeepSupervision",
    "FeatureHints",
    "FunctionMatching",
    "HintonDistillation",
    "LogitMatching",
    "Method",
    "MethodOptions",
    "MutualLearning",
    "Needs",
    "OnlineDistillation",
    "StepOutput",
    "Supervised",
    "TokenDistillation",
    "build_method",
    "create_method",
    "method_class",
    "method_names",
    "refusal_for_data",
]
