"""The model zoo (mlp, cnn, small ResNet) and `build_model`, which builds one from a spec dict."""
from distillery.models.factory import MODELS, build_model, count_parameters, size_on_disk_bytes
from distillery.models.init_from import InitReport, initialize_from_teacher
from distillery.models.resnet import BasicBlock, ResNet, resnet
from distillery.models.zoo import cnn, mlp

__all__ = [
    "MODELS",
    "BasicBlock",
    "InitReport",
    "ResNet",
    "build_model",
    "cnn",
    "count_parameters",
    "initialize_from_teacher",
    "mlp",
    "resnet",
    "size_on_disk_bytes",
]
