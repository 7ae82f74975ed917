"""Training methods: each is a small class that turns a batch into one StepOutput."""
from distillery.methods.base import METHODS, Method, StepOutput
from distillery.methods.factory import create_method, method_default
from distillery.methods.modern import DIST, DecoupledKD
from distillery.methods.soft_targets import HintonDistillation, LogitMatching
from distillery.methods.supervised import Supervised

__all__ = [
    "DIST",
    "METHODS",
    "DecoupledKD",
    "HintonDistillation",
    "LogitMatching",
    "Method",
    "StepOutput",
    "Supervised",
    "create_method",
]
