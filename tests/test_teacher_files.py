"""Teachers given as files: an ONNX model run in ONNX Runtime, and outputs computed elsewhere (.npy, .parquet)."""
import copy

import numpy as np
import onnx
import pyarrow
import pyarrow.parquet
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from distillery.compress.quiet import quiet
from distillery.errors import ConfigError, DataError, ModelError
from distillery.teachers.given_outputs import read_teacher_outputs
from distillery.teachers.onnx_teacher import OnnxTeacher, load_onnx_teacher

WEIGHT = np.arange(36, dtype=np.float32).reshape(12, 3) / 36 - 0.5
BIAS = np.array([0.1, -0.2, 0.3], dtype=np.float32)


# ---------------------------------------------------------------- ONNX models


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[nn.Module, object]:
    """A tiny torch model and its ONNX export with a dynamic batch (exported once: the exporter's first call
    takes seconds)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    with quiet():
        program = torch.onnx.export(model, (torch.randn(2, 3, 4),), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
        program.save(str(path), external_data=False)
    return model, path


def write_graph(path, inputs, outputs, nodes, initializers=()):
    """Write a hand-built ONNX graph: exact control over input counts and declared shapes."""
    graph = helper.make_graph(nodes, "teacher", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def linear_graph(path, batch):
    """logits = inputs [batch, 12] @ WEIGHT + BIAS; ``batch`` may be a name (dynamic)."""
    inputs = [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, [batch, 12])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])]
    nodes = [helper.make_node("MatMul", ["inputs", "weight"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["logits"])]
    return write_graph(path, inputs, outputs, nodes,
                       [numpy_helper.from_array(WEIGHT, "weight"), numpy_helper.from_array(BIAS, "bias")])


@pytest.mark.parametrize("batch", [1, 7, 3])
def test_onnx_teacher_gives_the_torch_models_logits(exported, batch):
    model, path = exported
    teacher = OnnxTeacher(path)
    inputs = torch.randn(batch, 3, 4, requires_grad=True)
    logits = teacher(inputs)
    assert logits.shape == (batch, 3) and logits.dtype == torch.float32 and not logits.requires_grad
    assert logits.device == inputs.device
    torch.testing.assert_close(logits, model(inputs).detach(), atol=1e-5, rtol=0)


def test_onnx_teacher_is_frozen_and_describes_itself(exported):
    path = exported[1]
    teacher, metadata = load_onnx_teacher(path)
    assert list(teacher.parameters()) == [] and not teacher.training
    assert teacher.input_shape == (3, 4) and teacher.num_classes == 3 and teacher.batch_size is None
    assert metadata == {"input_shape": [3, 4], "num_classes": 3, "preprocessing": None,
                        "architecture": {"name": "onnx", "path": str(path)}}
    inputs = torch.randn(5, 3, 4)
    torch.testing.assert_close(copy.deepcopy(teacher)(inputs), teacher(inputs))


@pytest.mark.parametrize("batch", [1, 4, 7, 9])
def test_a_fixed_batch_runs_in_padded_chunks(tmp_path, batch):
    teacher = OnnxTeacher(linear_graph(tmp_path / "fixed.onnx", batch=4))
    assert teacher.batch_size == 4
    inputs = torch.randn(batch, 12)
    expected = torch.from_numpy(inputs.numpy() @ WEIGHT + BIAS)
    torch.testing.assert_close(teacher(inputs), expected, atol=1e-5, rtol=0)


def open_classes_graph(path):
    """Three logits picked by NonZero, whose output size the graph cannot know before it runs."""
    inputs = [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", 12])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "classes"])]
    nodes = [helper.make_node("MatMul", ["inputs", "weight"], ["product"]),
             helper.make_node("NonZero", ["keep"], ["kept"]),
             helper.make_node("Squeeze", ["kept", "first"], ["columns"]),
             helper.make_node("Gather", ["product", "columns"], ["logits"], axis=1)]
    constants = [numpy_helper.from_array(WEIGHT, "weight"), numpy_helper.from_array(np.ones(3, np.bool_), "keep"),
                 numpy_helper.from_array(np.array([0], np.int64), "first")]
    return write_graph(path, inputs, outputs, nodes, constants)


def test_unknown_classes_are_found_by_running_one_sample(tmp_path):
    teacher, metadata = load_onnx_teacher(open_classes_graph(tmp_path / "open.onnx"))
    assert teacher.num_classes is None and metadata["num_classes"] == 3 and metadata["input_shape"] == [12]


def two_inputs(path):
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3]) for name in ("left", "right")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])]
    return write_graph(path, inputs, outputs, [helper.make_node("Add", ["left", "right"], ["logits"])])


def three_dimensional_output(path):
    inputs = [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", 3])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 1])]
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    return write_graph(path, inputs, outputs, [helper.make_node("Unsqueeze", ["inputs", "axes"], ["logits"])], [axes])


def not_onnx(path):
    path.write_bytes(b"these bytes are no protobuf of a model")
    return path


@pytest.mark.parametrize("build, words", [
    (lambda tmp: tmp / "absent.onnx", ["absent.onnx", "does not exist"]),
    (lambda tmp: not_onnx(tmp / "garbage.onnx"), ["garbage.onnx", "cannot load", "INVALID_PROTOBUF"]),
    (lambda tmp: two_inputs(tmp / "two.onnx"), ["two.onnx", "2 inputs", "left, right"]),
    (lambda tmp: three_dimensional_output(tmp / "cube.onnx"), ["cube.onnx", "not [B, C]"]),
])
def test_onnx_files_that_cannot_be_teachers_are_refused(tmp_path, build, words):
    with pytest.raises(ModelError) as caught:
        load_onnx_teacher(build(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_inputs_of_another_shape_are_refused_naming_both(exported):
    teacher = OnnxTeacher(exported[1])
    with pytest.raises(ModelError, match=r"shape \(3, 4\) but got \(12,\)"):
        teacher(torch.randn(2, 12))


# ---------------------------------------------------------------- outputs computed elsewhere

LOGITS = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], dtype=np.float32)
PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]], dtype=np.float32)


def write_parquet(path, columns):
    pyarrow.parquet.write_table(pyarrow.table(columns), path)
    return path


def test_npy_logits_come_back_as_they_were(tmp_path):
    np.save(tmp_path / "logits.npy", LOGITS)
    result = read_teacher_outputs(tmp_path / "logits.npy", size=2)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, torch.from_numpy(LOGITS), atol=0, rtol=0)


@pytest.mark.parametrize("columns", [
    {"logits": LOGITS.tolist()},
    {"scores": LOGITS.tolist()},  # the only column
    {"label": [2, 0], "logits": LOGITS.tolist()},  # a list column named logits among others
    {"cat": LOGITS[:, 0], "dog": LOGITS[:, 1], "bird": LOGITS[:, 2]},  # one column per class, in file order
])
def test_parquet_logits_come_back_as_they_were(tmp_path, columns):
    result = read_teacher_outputs(write_parquet(tmp_path / "outputs.parquet", columns), size=2)
    torch.testing.assert_close(result, torch.from_numpy(LOGITS), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["auto", "probabilities"])
def test_probabilities_become_log_probabilities(tmp_path, kind):
    np.save(tmp_path / "probabilities.npy", PROBABILITIES)
    result = read_teacher_outputs(tmp_path / "probabilities.npy", size=2, kind=kind)
    assert bool(torch.isfinite(result).all())  # the zero probability too
    torch.testing.assert_close(result.softmax(dim=1), torch.from_numpy(PROBABILITIES), atol=1e-6, rtol=0)


def test_auto_keeps_rows_that_do_not_sum_to_one_and_logits_keeps_everything(tmp_path):
    np.save(tmp_path / "positive.npy", np.abs(LOGITS))
    torch.testing.assert_close(read_teacher_outputs(tmp_path / "positive.npy", size=2),
                               torch.from_numpy(np.abs(LOGITS)), atol=0, rtol=0)
    np.save(tmp_path / "probabilities.npy", PROBABILITIES)
    torch.testing.assert_close(read_teacher_outputs(tmp_path / "probabilities.npy", size=2, kind="logits"),
                               torch.from_numpy(PROBABILITIES), atol=0, rtol=0)


def test_rows_are_matched_by_id_in_a_shuffled_file(tmp_path):
    rows = {"cat/1.png": [1.0, 0.0], "cat/2.png": [2.0, 0.0], "dog/1.png": [3.0, 0.0], "dog/9.png": [4.0, 0.0]}
    shuffled = ["dog/9.png", "cat/2.png", "dog/1.png", "cat/1.png"]  # and one sample not in the transfer set
    path = write_parquet(tmp_path / "outputs.parquet",
                         {"file": shuffled, "logits": [rows[name] for name in shuffled]})
    wanted = ["cat/1.png", "dog/1.png", "cat/2.png"]
    result = read_teacher_outputs(path, size=3, ids=wanted, id_column="file")
    torch.testing.assert_close(result, torch.tensor([rows[name] for name in wanted]), atol=0, rtol=0)


def test_row_numbers_match_an_integer_id_column(tmp_path):
    path = write_parquet(tmp_path / "outputs.parquet", {"row": [2, 0, 1], "a": [2.0, 0.0, 1.0], "b": [0.0, 0.0, 0.0]})
    result = read_teacher_outputs(path, size=3, ids=torch.arange(3), id_column="row")
    assert result[:, 0].tolist() == [0.0, 1.0, 2.0]


def npy(path, array):
    np.save(path, np.asarray(array))
    return path


BAD_OUTPUTS = [
    (lambda tmp: tmp / "absent.npy", {}, ["absent.npy", "does not exist"]),
    (lambda tmp: npy(tmp / "outputs.npy", LOGITS).rename(tmp / "outputs.csv"), {}, ["outputs.csv", ".parquet"]),
    (lambda tmp: npy(tmp / "three.npy", np.zeros((3, 3))), {},
     ["3 rows", "2 samples", "aligned by row; add an id column to align by id"]),
    (lambda tmp: write_parquet(tmp / "ids.parquet", {"id": ["a", "b"], "logits": LOGITS.tolist()}),
     {"ids": ["a", "x", "y"], "size": 3, "id_column": "id"}, ["lacks 2 of", "3 sample ids", "x, y"]),
    (lambda tmp: write_parquet(tmp / "twice.parquet", {"id": ["a", "a"], "logits": LOGITS.tolist()}),
     {"ids": ["a", "a"], "id_column": "id"}, ["more than once", "'id'", "a"]),
    (lambda tmp: write_parquet(tmp / "text.parquet", {"a": [1.0, 2.0], "name": ["x", "y"]}), {},
     ["non-numeric column 'name'"]),
    (lambda tmp: npy(tmp / "nan.npy", [[0.0, 1.0], [np.nan, 1.0]]), {}, ["NaN", "1 of 2 rows", "row 1"]),
    (lambda tmp: npy(tmp / "inf.npy", [[np.inf, 1.0], [0.0, 1.0]]), {}, ["infinite", "row 0"]),
    (lambda tmp: npy(tmp / "sums.npy", [[0.5, 0.5], [0.6, 0.6]]), {"kind": "probabilities"},
     ["probabilities", "row 1", "sums to 1.2"]),
    (lambda tmp: npy(tmp / "negative.npy", [[1.5, -0.5], [0.5, 0.5]]), {"kind": "probabilities"},
     ["row 0", "negative value"]),
    (lambda tmp: npy(tmp / "one.npy", [[1.0], [2.0]]), {}, ["(2, 1)", "C >= 2"]),
    (lambda tmp: npy(tmp / "rows.npy", LOGITS), {"ids": ["a", "b"], "id_column": "id"}, ["no column 'id'"]),
    (lambda tmp: not_onnx(tmp / "garbage.npy"), {}, ["garbage.npy", "not a .npy array", "numpy.save"]),
    (lambda tmp: not_onnx(tmp / "garbage.parquet"), {}, ["garbage.parquet", "not a readable parquet file"]),
]


@pytest.mark.parametrize("build, options, words", BAD_OUTPUTS)
def test_outputs_files_that_cannot_be_used_are_refused(tmp_path, build, options, words):
    with pytest.raises(DataError) as caught:
        read_teacher_outputs(build(tmp_path), **{"size": 2, **options})
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert "allow_pickle" not in message  # never advise unpickling a file from anyone


def test_an_unknown_kind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'softmax'"):
        read_teacher_outputs(npy(tmp_path / "logits.npy", LOGITS), size=2, kind="softmax")
