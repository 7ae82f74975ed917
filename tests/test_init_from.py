"""Initialising a student from teacher weights: by name and shape, or by a layer map."""
from __future__ import annotations

import pytest
import torch

from distillery.errors import ModelError
from distillery.models import InitReport, build_model, cnn, initialize_from_teacher, mlp

BN_SUFFIXES = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _resnet(blocks_per_stage: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = {"name": "resnet", "widths": [4, 8], "blocks_per_stage": blocks_per_stage}
    return build_model(spec, (3, 8, 8), 5)


def _block_tensors(block: str) -> list[str]:
    """State-dict names of one BasicBlock's two conv+BN layers (its shortcut excluded)."""
    names = []
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        names.append(f"{block}.{conv}.weight")
        names += [f"{block}.{bn}.{suffix}" for suffix in BN_SUFFIXES]
    return names


def test_same_architecture_copy_makes_outputs_equal():
    torch.manual_seed(0)
    teacher, student = mlp((6,), 3, hidden=[5, 4]), mlp((6,), 3, hidden=[5, 4])
    inputs = torch.randn(4, 6)
    assert not torch.allclose(student(inputs), teacher(inputs))
    report = initialize_from_teacher(student, teacher)
    assert torch.equal(student(inputs), teacher(inputs))
    assert report.copied == [(name, name) for name in teacher.state_dict()]
    assert report.shape_mismatch == [] and report.missing == []


def test_narrower_student_copies_only_matching_shapes_and_reports_mismatches():
    torch.manual_seed(0)
    teacher, student = mlp((6,), 3, hidden=[8, 4]), mlp((6,), 3, hidden=[5, 4])
    before = {name: tensor.clone() for name, tensor in student.state_dict().items()}
    report = initialize_from_teacher(student, teacher)
    assert report.copied == [
        ("features.1.0.bias", "features.1.0.bias"),
        ("classifier.weight", "classifier.weight"),
        ("classifier.bias", "classifier.bias"),
    ]
    assert report.shape_mismatch == [
        ("features.0.0.weight", "features.0.0.weight", (5, 6), (8, 6)),
        ("features.0.0.bias", "features.0.0.bias", (5,), (8,)),
        ("features.1.0.weight", "features.1.0.weight", (4, 5), (4, 8)),
    ]
    assert report.missing == []
    student_state, teacher_state = student.state_dict(), teacher.state_dict()
    for name, _ in report.copied:
        assert torch.equal(student_state[name], teacher_state[name])
    for name, *_ in report.shape_mismatch:
        assert torch.equal(student_state[name], before[name])


def test_batch_norm_running_statistics_are_copied():
    torch.manual_seed(0)
    teacher, student = cnn((1, 8, 8), 3, channels=[4]), cnn((1, 8, 8), 3, channels=[4])
    teacher.train()
    for _ in range(3):  # moves the teacher's running statistics away from their initial values
        teacher(torch.randn(8, 1, 8, 8) * 3 + 1)
    report = initialize_from_teacher(student, teacher)
    for suffix in ("running_mean", "running_var", "num_batches_tracked"):
        name = f"features.0.1.{suffix}"
        assert (name, name) in report.copied
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    assert int(student.state_dict()["features.0.1.num_batches_tracked"]) == 3
    inputs = torch.randn(2, 1, 8, 8)
    assert torch.equal(student.eval()(inputs), teacher.eval()(inputs))


def test_copied_tensors_do_not_share_storage_with_the_teacher():
    torch.manual_seed(0)
    teacher, student = cnn((1, 8, 8), 3, channels=[4]), cnn((1, 8, 8), 3, channels=[4])
    initialize_from_teacher(student, teacher)
    copied = {name: tensor.clone() for name, tensor in student.state_dict().items()}
    with torch.no_grad():
        for tensor in teacher.state_dict().values():
            tensor.add_(1)
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, copied[name]), name


def test_layer_map_every_other_block_copies_exactly_the_mapped_tensors():
    teacher, student = _resnet(blocks_per_stage=2, seed=0), _resnet(blocks_per_stage=1, seed=1)
    layer_map = {"stem": "stem", "layer1.0": "layer1.1", "layer2.0": "layer2.1", "classifier": "classifier"}
    report = initialize_from_teacher(student, teacher, layer_map)

    stem = ["stem.conv.weight"] + [f"stem.bn.{suffix}" for suffix in BN_SUFFIXES]
    # layer2.0 downsamples (4 -> 8 channels) but teacher layer2.1 does not: its conv1 cannot fit.
    layer2 = [name for name in _block_tensors("layer2.0") if not name.startswith("layer2.0.conv1")]
    expected = [(name, name) for name in stem]
    expected += [(name, name.replace("layer1.0", "layer1.1")) for name in _block_tensors("layer1.0")]
    expected += [(name, name.replace("layer2.0", "layer2.1")) for name in layer2]
    expected += [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    assert sorted(report.copied) == sorted(expected)
    assert report.shape_mismatch == [
        ("layer2.0.conv1.weight", "layer2.1.conv1.weight", (8, 4, 3, 3), (8, 8, 3, 3))
    ]
    # The teacher's layer2.1 has no projection shortcut to copy from.
    assert report.missing == ["layer2.0.shortcut.0.weight"] + [
        f"layer2.0.shortcut.1.{suffix}" for suffix in BN_SUFFIXES
    ]

    student_weight = student.state_dict()["layer1.0.conv1.weight"]
    assert torch.equal(student_weight, teacher.state_dict()["layer1.1.conv1.weight"])
    assert not torch.equal(student_weight, teacher.state_dict()["layer1.0.conv1.weight"])


def test_layer_map_longest_prefix_wins_and_unmapped_tensors_are_left_alone():
    teacher, student = _resnet(blocks_per_stage=2, seed=0), _resnet(blocks_per_stage=2, seed=1)
    stem_before = student.state_dict()["stem.conv.weight"].clone()
    report = initialize_from_teacher(student, teacher, {"layer1": "layer1", "layer1.1": "layer1.0"})
    pairs = dict(report.copied)
    assert pairs["layer1.0.conv1.weight"] == "layer1.0.conv1.weight"
    assert pairs["layer1.1.conv1.weight"] == "layer1.0.conv1.weight"
    assert all(name.startswith("layer1.") for name in pairs)
    assert "stem.conv.weight" in report.missing
    assert torch.equal(student.state_dict()["stem.conv.weight"], stem_before)


def test_layer_map_from_the_root_module_matches_copying_by_name():
    torch.manual_seed(0)
    teacher, student = mlp((6,), 3, hidden=[8, 4]), mlp((6,), 3, hidden=[5, 4])
    by_map = initialize_from_teacher(student, teacher, {"": ""})
    assert by_map == initialize_from_teacher(student, teacher)


def test_bad_layer_map_key_names_it_and_lists_valid_student_paths():
    teacher, student = _resnet(blocks_per_stage=2, seed=0), _resnet(blocks_per_stage=1, seed=1)
    with pytest.raises(ModelError) as caught:
        initialize_from_teacher(student, teacher, {"layer1.1": "layer1.1"})
    message = str(caught.value)
    assert "'layer1.1'" in message and "student" in message
    assert "valid module paths: stem, stem.conv" in message and "layer1.0" in message
    assert message.endswith(", …") and "\n" not in message


def test_bad_layer_map_value_names_it_and_lists_valid_teacher_paths():
    torch.manual_seed(0)
    teacher, student = mlp((6,), 3, hidden=[5]), mlp((6,), 3, hidden=[5])
    with pytest.raises(ModelError) as caught:
        initialize_from_teacher(student, teacher, {"classifier": "head"})
    message = str(caught.value)
    assert "'head'" in message and "teacher" in message
    # A small model lists all its paths, without an ellipsis.
    paths = "flatten, features, features.0, features.0.0, features.0.1, classifier"
    assert message.endswith(f"valid module paths: {paths}")


def test_layer_map_that_copies_nothing_is_an_error_and_leaves_the_student_untouched():
    torch.manual_seed(0)
    teacher, student = mlp((6,), 3, hidden=[5]), mlp((6,), 3, hidden=[5])
    before = {name: tensor.clone() for name, tensor in student.state_dict().items()}
    with pytest.raises(ModelError, match="copies no tensor"):
        initialize_from_teacher(student, teacher, {"classifier": "features.0.0"})
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_summary_states_the_counts():
    torch.manual_seed(0)
    teacher, student = mlp((6,), 3, hidden=[8, 4]), mlp((6,), 3, hidden=[5, 4])
    summary = initialize_from_teacher(student, teacher).summary()
    # Copied: features.1.0.bias (4) + classifier (4 * 3 + 3) = 19 of 6*5+5 + 5*4+4 + 4*3+3 = 74.
    assert summary == (
        "copied 3 of 6 student tensors (19 of 74 parameters) from the teacher; 3 shape mismatches"
    )

    teacher, student = _resnet(blocks_per_stage=2, seed=0), _resnet(blocks_per_stage=1, seed=1)
    layer_map = {"stem": "stem", "layer1.0": "layer1.1", "layer2.0": "layer2.1", "classifier": "classifier"}
    summary = initialize_from_teacher(student, teacher, layer_map).summary()
    # Tensors: stem 6 + layer1.0 12 + layer2.0 11 (all but conv1 and the shortcut) + classifier 2 = 31
    # of 38. Parameters: stem 108+8, layer1.0 144+8+144+8, layer2.0 16+576+16, classifier 40+5
    # = 1,073 copied of 1,409 (add layer2.0.conv1 288 and the shortcut 32+16).
    assert summary == (
        "copied 31 of 38 student tensors (1,073 of 1,409 parameters) from the teacher; "
        "1 shape mismatch; 6 without a teacher counterpart"
    )


def test_report_can_be_built_from_the_three_lists():
    report = InitReport(copied=[("a", "a")], shape_mismatch=[], missing=["b"])
    assert report.summary().startswith("copied 1 of 2 student tensors")
