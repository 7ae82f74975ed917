"""The model zoo, build_model's spec handling, user models and the size helpers."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from distillery.errors import ModelError
from distillery.models import (
    MODELS,
    build_model,
    cnn,
    count_parameters,
    mlp,
    resnet,
    size_on_disk_bytes,
)

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
# Small widths keep the 28x28 and 32x32 forwards fast on a shared CPU.
SMALL_SPECS = {
    "mlp": {"name": "mlp", "hidden": [16, 8], "dropout": 0.1},
    "cnn": {"name": "cnn", "channels": [4, 8, 8], "hidden": 8, "convs_per_stage": 2},
    "resnet": {"name": "resnet", "widths": [4, 8, 8], "blocks_per_stage": 1},
}


def test_registry_names_the_zoo():
    assert MODELS.names() == ["causal_lm", "cnn", "huggingface", "mlp", "resnet", "sequence_classifier"]


@pytest.mark.parametrize("name", sorted(SMALL_SPECS))
@pytest.mark.parametrize("input_shape", IMAGE_SHAPES)
def test_every_builder_maps_images_to_logits(name, input_shape):
    model = build_model(SMALL_SPECS[name], input_shape, num_classes=7)
    model.train()  # BN in training mode needs more than one value per channel
    assert model(torch.randn(3, *input_shape)).shape == (3, 7)
    model.eval()
    assert model(torch.randn(1, *input_shape)).shape == (1, 7)


def test_mlp_takes_flat_vectors():
    model = build_model({"name": "mlp"}, (64,), 10)
    assert model(torch.randn(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("builder", [mlp, cnn, resnet])
def test_defaults_work_on_8x8_digits(builder):
    assert builder((1, 8, 8), 10)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cnn_survives_more_pooling_stages_than_the_input_has_pixels():
    model = cnn((1, 8, 8), 3, channels=[4, 4, 4, 4, 4])
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_hook_paths_are_readable():
    cnn_names = dict(cnn((1, 8, 8), 3, channels=[4, 8]).named_modules())
    assert {"features", "features.0", "features.1", "classifier"} <= set(cnn_names)
    assert isinstance(cnn_names["classifier"], nn.Linear)
    resnet_names = dict(resnet((3, 32, 32), 3, widths=[4, 8, 8]).named_modules())
    assert {"stem", "layer1", "layer2", "layer3", "layer3.1", "classifier"} <= set(resnet_names)
    assert "layer4" not in resnet_names
    mlp_names = dict(mlp((4,), 2, hidden=[3, 3]).named_modules())
    assert {"features.0", "features.1", "classifier"} <= set(mlp_names)


def test_resnet_halves_resolution_per_stage_after_the_first():
    model = resnet((3, 32, 32), 10, widths=[4, 8, 16], blocks_per_stage=1)
    shapes = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda module, args, output, name=name: shapes.__setitem__(name, tuple(output.shape))
        )
        for name in ("layer1", "layer2", "layer3")
    ]
    model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert shapes == {"layer1": (2, 4, 32, 32), "layer2": (2, 8, 16, 16), "layer3": (2, 16, 8, 8)}


def test_unknown_keyword_names_the_key_and_the_valid_keys():
    with pytest.raises(ModelError) as error:
        build_model({"name": "mlp", "hiden": [4]}, (4,), 2)
    message = str(error.value)
    assert "'hiden'" in message and "hidden" in message and "dropout" in message
    assert "did you mean 'hidden'" in message


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ModelError, match="cnn, huggingface, mlp, resnet"):
        build_model({"name": "transformer"}, (4,), 2)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "mlp", "dropout": -0.1},
        {"name": "mlp", "dropout": 1.0},
        {"name": "mlp", "hidden": 64},
        {"name": "mlp", "hidden": [64, 0]},
        {"name": "cnn", "channels": []},
        {"name": "cnn", "batch_norm": "yes"},
        {"name": "cnn", "convs_per_stage": 0},
        {"name": "cnn", "hidden": -1},
        {"name": "resnet", "widths": [16, "32"]},
        {"name": "resnet", "blocks_per_stage": 0},
        {"name": "mlp", "num_classes": 3},
        {"hidden": [4]},
    ],
)
def test_bad_values_are_model_errors(spec):
    with pytest.raises(ModelError):
        build_model(spec, (1, 8, 8), 2)


def test_cnn_needs_an_image_shape():
    with pytest.raises(ModelError, match="channels, height, width"):
        build_model({"name": "cnn"}, (64,), 2)


USER_MODULE = '''
from torch import nn

def tiny_net(num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes))

def shaped_net(input_shape, num_classes):
    return nn.Linear(input_shape[-1], num_classes)

def free_net(**kwargs):
    return nn.Linear(kwargs["inputs"], 2)

def not_a_model():
    return "model"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "distillery_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "distillery_user_models", raising=False)
    return "distillery_user_models"


def test_user_function_gets_its_keywords_and_num_classes(user_module):
    model = build_model({"name": f"{user_module}:tiny_net", "width": 6}, (1, 8, 8), 5)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    assert model[3].in_features == 6


def test_user_function_gets_input_shape_when_it_asks(user_module):
    model = build_model({"name": f"{user_module}:shaped_net"}, (12,), 3)
    assert (model.in_features, model.out_features) == (12, 3)


def test_user_function_with_var_keywords_gets_only_the_spec(user_module):
    model = build_model({"name": f"{user_module}:free_net", "inputs": 9}, (12,), 3)
    assert model.in_features == 9


def test_user_function_unknown_keyword(user_module):
    with pytest.raises(ModelError, match="'depth'.*valid keys: num_classes, width"):
        build_model({"name": f"{user_module}:tiny_net", "depth": 3}, (4,), 2)


def test_user_function_must_return_a_module(user_module):
    with pytest.raises(ModelError, match="returned str"):
        build_model({"name": f"{user_module}:not_a_model"}, (4,), 2)


def test_user_function_missing_attribute(user_module):
    with pytest.raises(ModelError, match="no 'huge_net'"):
        build_model({"name": f"{user_module}:huge_net"}, (4,), 2)


def test_missing_module_is_a_model_error():
    with pytest.raises(ModelError, match="no_such_package_xyz"):
        build_model({"name": "no_such_package_xyz.models:net"}, (4,), 2)


def test_count_parameters_by_hand():
    model = mlp((4,), 2, hidden=[3])
    assert count_parameters(model) == 4 * 3 + 3 + 3 * 2 + 2
    model.requires_grad_(False)  # frozen parameters still count
    assert count_parameters(model) == 23


def test_size_on_disk_is_the_weights_plus_a_small_header():
    model = mlp((64,), 10, hidden=[32])
    params = count_parameters(model)
    assert 4 * params <= size_on_disk_bytes(model) < 4 * params + 4096


def test_size_on_disk_counts_buffers_and_tied_weights_once():
    with_bn = cnn((1, 8, 8), 3, channels=[4])
    without_bn = cnn((1, 8, 8), 3, channels=[4], batch_norm=False)
    assert size_on_disk_bytes(with_bn) > size_on_disk_bytes(without_bn)
    untied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    tied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    tied[1].weight = tied[0].weight
    assert size_on_disk_bytes(untied) - size_on_disk_bytes(tied) >= 4 * 64
