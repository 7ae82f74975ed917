"""Hugging Face image classifiers from a local folder as teachers (fed their own preprocessing), and smaller
configs of the same family as students; tiny randomly initialised ViTs, nothing downloaded."""
import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, write_yaml

from distillery.app.config import DataConfig
from distillery.app.steps.prepared_data import prepare_data
from distillery.errors import ModelError
from distillery.models import build_model
from distillery.models.checkpoint import load_model
from distillery.models.huggingface import load_pretrained_classifier

MEAN, STD = 0.3, 0.2


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=10,
                       id2label={index: str(index) for index in range(10)},
                       label2id={str(index): index for index in range(10)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(image_mean=[MEAN], image_std=[STD], size={"height": 8, "width": 8}).save_pretrained(folder)
    return folder


def test_a_pretrained_folder_loads_with_its_preprocessing_and_class_names(vit_folder):
    from transformers import ViTForImageClassification

    teacher, metadata = load_pretrained_classifier(vit_folder)
    assert metadata["preprocessing"] == {"mean": [MEAN], "std": [STD]}
    assert metadata["class_names"] == [str(index) for index in range(10)] and metadata["num_classes"] == 10
    reference = ViTForImageClassification.from_pretrained(vit_folder).eval()
    pixels = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(teacher(pixels), reference(pixel_values=pixels).logits)
    with pytest.raises(ModelError, match="holds no config.json"):
        load_pretrained_classifier(vit_folder / "missing")


def test_a_huggingface_teacher_is_fed_its_own_inputs_and_a_smaller_config_is_its_student(vit_folder, tmp_path):
    teacher, _ = load_pretrained_classifier(vit_folder)
    data = prepare_data(DataConfig(dataset="digits", val_fraction=0.1))
    raw = data.normalizer.denormalize(data.test.inputs)
    with torch.no_grad():
        own = (teacher((raw - MEAN) / STD).argmax(1) == data.test.labels).float().mean().item()
    student = {"name": "huggingface", "base": str(vit_folder), "num_hidden_layers": 1, "hidden_size": 8,
               "intermediate_size": 16}
    config = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path / "student", model=student, progress=True, train={"epochs": 2},
        distill={"teacher": {"huggingface": str(vit_folder)}}))
    result = invoke("distill", str(config))
    assert_ok(result)
    assert f"teacher {vit_folder}: {own:.2%} test accuracy" in result.stderr
    model, metadata = load_model(tmp_path / "student")
    assert metadata["architecture"]["num_hidden_layers"] == 1
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_a_student_from_a_config_dict_and_a_bad_spec_is_one_line(tmp_path):
    spec = {"name": "huggingface", "config": {"model_type": "vit", "image_size": 8, "patch_size": 4,
                                              "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "intermediate_size": 16}}
    model = build_model(spec, (1, 8, 8), 10)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ModelError, match="exactly one of base"):
        build_model({"name": "huggingface"}, (1, 8, 8), 10)
    config = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path / "student", distill={"teacher": {"huggingface": str(tmp_path / "nowhere")}}))
    assert_user_error(invoke("distill", str(config)), "holds no config.json")


def test_a_folder_with_pickled_weights_only_is_refused(vit_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(vit_folder, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # what an older save_pretrained writes: a pickle
    with pytest.raises(ModelError, match="from safetensors weights"):
        load_pretrained_classifier(folder)
