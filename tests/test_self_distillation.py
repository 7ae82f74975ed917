"""Self-distillation: deep supervision (auxiliary heads taught by the final head) and born-again generations."""
import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, run_config, write_yaml
from safetensors.torch import load_file
from torch import nn

import distillery
from distillery.app.config.distill import logit_methods
from distillery.app.config.files import build_config
from distillery.app.steps.evaluation import evaluate_checkpoint
from distillery.app.steps.fit import fit_method
from distillery.app.workflows.run import run
from distillery.data import Augmentation, Batch
from distillery.errors import ConfigError, ModelError
from distillery.methods import DeepSupervision, create_method, method_class, method_names
from distillery.methods.teacher_logits import SingleTeacherMethod
from distillery.models import build_model
from distillery.models.hooks import capture_features

SHAPE = (1, 8, 8)


def model(spec, input_shape=SHAPE, classes=3, seed=0):
    torch.manual_seed(seed)
    return build_model(spec, input_shape, classes)


def batch(count=8, input_shape=SHAPE, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(count, *input_shape, generator=generator),
            torch.randint(0, classes, (count,), generator=generator))


# ---------------------------------------------------------------- deep supervision: the formula


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits, labels):
    return -log_softmax(logits)[np.arange(len(labels)), labels].mean()


def kl_t_squared(student_logits, teacher_logits, temperature):
    teacher_log_probs = log_softmax(teacher_logits / temperature)
    student_log_probs = log_softmax(student_logits / temperature)
    return (np.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)).sum(axis=1).mean() * temperature**2


def numpy_parameters(module):
    return {name: value.detach().double().numpy() for name, value in module.state_dict().items()}


def test_deep_supervision_loss_matches_a_hand_computation():
    student = model({"name": "mlp", "hidden": [5, 4]}, input_shape=(6,))
    method = create_method("deep_supervision", student, student_layers=["features.0", "features.1"],
                           input_shape=(6,), temperature=2.5, alpha=0.3, aux_weight=0.7)
    inputs, labels = batch(input_shape=(6,))
    output = method.step(Batch(inputs, labels))

    weights, heads = numpy_parameters(student), [numpy_parameters(head) for head in method.heads]
    x, y = inputs.double().numpy(), labels.numpy()
    hidden0 = np.maximum(x @ weights["features.0.0.weight"].T + weights["features.0.0.bias"], 0)
    hidden1 = np.maximum(hidden0 @ weights["features.1.0.weight"].T + weights["features.1.0.bias"], 0)
    final = hidden1 @ weights["classifier.weight"].T + weights["classifier.bias"]
    aux, aux_kd = 0.0, 0.0
    for features, head in zip((hidden0, hidden1), heads):
        head_logits = features @ head["weight"].T + head["bias"]
        soft = kl_t_squared(head_logits, final, 2.5)
        aux += 0.3 * cross_entropy(head_logits, y) + 0.7 * soft
        aux_kd += soft
    expected = cross_entropy(final, y) + 0.7 * aux

    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    assert output.logs["ce"].item() == pytest.approx(cross_entropy(final, y), rel=1e-5)
    assert output.logs["aux"].item() == pytest.approx(aux, rel=1e-5)
    assert output.logs["aux_kd"].item() == pytest.approx(aux_kd, rel=1e-5)
    assert torch.allclose(output.logits.double(), torch.from_numpy(final), atol=1e-6)
    assert set(output.logs) == {"ce", "aux", "aux_kd", "aux1_accuracy", "aux2_accuracy"}


def test_convolutional_heads_pool_to_a_grid_then_classify():
    student = model({"name": "cnn", "channels": [8, 16]}, input_shape=(1, 16, 16))
    # features.0 gives [8, 8, 8] maps: pooled to 4 x 4 by averaging 2 x 2 blocks, then flattened.
    method = DeepSupervision(student, student_layers=["features.0"], input_shape=(1, 16, 16), alpha=1.0)
    linear = method.heads[0][-1]
    assert (linear.in_features, linear.out_features) == (8 * 4 * 4, 3)
    inputs, labels = batch(input_shape=(1, 16, 16))
    with capture_features({"stage": student.features[0]}) as features:
        student(inputs)
    blocks = features["stage"].reshape(8, 8, 4, 2, 4, 2).mean(dim=(3, 5))
    head_logits = blocks.flatten(1) @ linear.weight.T + linear.bias
    output = method.step(Batch(inputs, labels))
    expected = nn.functional.cross_entropy(output.logits, labels) + nn.functional.cross_entropy(head_logits, labels)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    accuracy = (head_logits.argmax(dim=1) == labels).float().mean()
    assert output.logs["aux1_accuracy"].item() == pytest.approx(accuracy.item())
    # A map already 4 x 4 or smaller is used whole.
    small = DeepSupervision(model({"name": "cnn", "channels": [8, 16]}), student_layers=["features.1"],
                            input_shape=SHAPE)
    assert small.heads[0][-1].in_features == 16 * 2 * 2


def test_final_head_is_detached_in_the_aux_kl_term():
    student = model({"name": "mlp", "hidden": [5]}, input_shape=(6,))
    # alpha = 0: the heads' loss is the KL term alone, and a large weight would dominate any leak.
    method = DeepSupervision(student, student_layers=["features.0"], input_shape=(6,), alpha=0.0, aux_weight=50.0)
    inputs, labels = batch(input_shape=(6,))
    method.step(Batch(inputs, labels)).loss.backward()
    with_heads = {name: p.grad.clone() for name, p in student.named_parameters()}
    assert method.heads[0].weight.grad.abs().sum() > 0

    student.zero_grad()
    nn.functional.cross_entropy(student(inputs), labels).backward()
    assert torch.allclose(with_heads["classifier.weight"], student.classifier.weight.grad, atol=1e-7)
    assert torch.allclose(with_heads["classifier.bias"], student.classifier.bias.grad, atol=1e-7)
    # The layer under the head does learn from the head: the KL reaches it.
    assert not torch.allclose(with_heads["features.0.0.weight"], student.features[0][0].weight.grad)


def test_heads_train_with_the_student_but_stay_out_of_its_checkpoint(tmp_path):
    student = model({"name": "cnn", "channels": [8, 16]})
    bare_keys = set(student.state_dict())
    method = DeepSupervision(student, student_layers=["features.0", "features.1"], input_shape=SHAPE)
    trainable = {id(p) for p in method.trainable_parameters()}
    head_parameters = {id(p) for p in method.heads.parameters()}
    assert trainable == {id(p) for p in student.parameters()} | head_parameters
    assert set(method.student.state_dict()) == bare_keys

    config = build_config(run_config(tmp_path / "run", model={"name": "cnn", "channels": [8, 16]},
                                     data={"dataset": "digits", "train_limit": 200},
                                     distill={"method": "deep_supervision", "student_layers": ["features.0"]}))
    run_dir = run(config)
    saved = load_file(str(run_dir / "model.safetensors"))
    assert set(saved) == set(build_model(config.model, SHAPE, 10).state_dict())
    loaded, metadata = distillery.load_model(run_dir)
    assert metadata["role"] == "distilled" and isinstance(loaded, nn.Sequential)


def test_wrong_layer_or_missing_labels_are_clear_errors():
    student = model({"name": "cnn", "channels": [8]})
    with pytest.raises(ModelError, match=r"student has no module 'feature.0' \(did you mean 'features.0'\?\); "
                                         r"valid paths: features, features.0"):
        create_method("deep_supervision", student, student_layers=["feature.0"], input_shape=SHAPE)
    with pytest.raises(ConfigError, match="input_shape"):
        DeepSupervision(student, student_layers=["features.0"])
    with pytest.raises(ConfigError, match="list of module paths"):
        DeepSupervision(student, student_layers="features.0", input_shape=SHAPE)
    with pytest.raises(ConfigError, match="trains without a teacher"):
        create_method("deep_supervision", student, model({"name": "cnn", "channels": [8]}),
                      student_layers=["features.0"], input_shape=SHAPE)
    method = DeepSupervision(student, student_layers=["features.0"], input_shape=SHAPE)
    with pytest.raises(ConfigError, match="needs labels"):
        method.step(Batch(batch()[0]))


# ---------------------------------------------------------------- deep supervision: learning


def head_accuracy(method, dataset):
    method.eval()
    with torch.no_grad(), capture_features({"stage": method._layer_modules[0]}) as features:
        logits = method.student(dataset.inputs)
        head_logits = method.heads[0](features["stage"])
    return ((logits.argmax(1) == dataset.labels).float().mean().item(),
            (head_logits.argmax(1) == dataset.labels).float().mean().item())


def test_deep_supervision_trains_the_student_and_its_heads_on_digits():
    train, test = distillery.load_dataset("digits")
    method = create_method("deep_supervision", model({"name": "cnn", "channels": [8, 16]}, classes=10),
                           student_layers=["features.0"], input_shape=SHAPE)
    result = fit_method(method, train, epochs=6, lr=0.01, batch_size=64, progress=False)
    student_accuracy, head_accuracy_on_test = head_accuracy(method, test)
    print(f"deep supervision on digits: student {student_accuracy:.3f}, head {head_accuracy_on_test:.3f}")
    assert student_accuracy > 0.85
    assert head_accuracy_on_test > 0.5  # chance is 0.1: the head on the first stage has learned
    assert result.history[-1]["train/aux1_accuracy"] > 0.5


# ---------------------------------------------------------------- born-again: the orchestration


def tiny_data(seed=0):
    inputs, labels = batch(64, input_shape=(6,), seed=seed)
    return [(inputs[:32], labels[:32]), (inputs[32:], labels[32:])]


def make_mlp():
    return build_model({"name": "mlp", "hidden": [5]}, (6,), 3)


def test_each_generation_distils_from_the_one_before():
    seen = []

    def watch(record, trainer):
        seen.append((record["generation"], getattr(trainer.method, "teacher", None), trainer.method.student))

    finished = []
    result = distillery.born_again(make_mlp, tiny_data(), generations=2, epochs=2, progress=False,
                                   temperature=3.0, on_epoch_end=watch,
                                   on_generation_end=lambda g, r: finished.append((g, r.model)))
    models = [generation.model for generation in result.generations]
    assert result.model is models[2] and len({id(m) for m in models}) == 3
    assert [g for g, _, _ in seen] == [0, 0, 1, 1, 2, 2] and finished == list(enumerate(models))
    for generation, teacher, student in seen:
        assert student is models[generation]
        assert teacher is (None if generation == 0 else models[generation - 1])
    assert all(record["generation"] == g for g, r in enumerate(result.generations) for record in r.history)


def test_fresh_generations_start_from_seed_plus_g():
    factory_calls = []

    def factory():
        built = make_mlp()
        factory_calls.append(built.classifier.weight.detach().clone())
        return built

    distillery.born_again(factory, tiny_data(), generations=2, epochs=1, progress=False, seed=5)
    # The last three builds are generations 0, 1 and 2 (the first two only check the method's options).
    for generation, weights in enumerate(factory_calls[-3:]):
        torch.manual_seed(5 + generation)
        assert torch.equal(weights, make_mlp().classifier.weight)


def test_a_given_teacher_is_generation_zero():
    teacher = make_mlp()
    teachers = []
    result = distillery.born_again(make_mlp, tiny_data(), generations=1, teacher=teacher, method="dist",
                                   epochs=1, progress=False,
                                   on_epoch_end=lambda record, trainer: teachers.append(trainer.method.teacher))
    assert result.generations[0].model is teacher and result.generations[0].history == []
    assert teachers == [teacher] and len(result.generations) == 2


def counting_teacher_factory(counts):
    """make_mlp whose models count the samples they see in eval mode: as a teacher, or being validated."""
    def count(module, inputs, output):
        if not module.training:
            counts[id(module)] = counts.get(id(module), 0) + len(inputs[0])

    def factory():
        built = make_mlp()
        built.register_forward_hook(count)
        return built
    return factory


@pytest.mark.parametrize("teacher_once, passes", [(True, 1), (False, 3)])
@pytest.mark.parametrize("as_batches", [False, True], ids=["dataset", "batches with augmentation off"])
def test_a_generation_teacher_runs_once_over_a_fixed_transfer_set(teacher_once, passes, as_batches):
    inputs, labels = batch(40, input_shape=(6,), seed=1)
    data = distillery.ArrayDataset(inputs, labels, ["a", "b", "c"])
    if as_batches:  # as a config run passes them: an Augmentation that is switched off
        data = distillery.BatchIterator(data, 8, shuffle=True, augmentation=Augmentation())
    counts = {}
    result = distillery.born_again(counting_teacher_factory(counts), data, generations=1, epochs=3, batch_size=8,
                                   progress=False, teacher_once=teacher_once)
    # Generation 0 saw nothing in eval mode while it trained (no validation data): every sample counted is
    # one it gave generation 1 as a teacher.
    assert counts.get(id(result.generations[0].model)) == passes * len(inputs)


def test_a_generation_taught_from_precomputed_logits_learns_what_a_live_teacher_teaches():
    inputs, labels = batch(40, input_shape=(6,), seed=1)
    data = distillery.ArrayDataset(inputs, labels, ["a", "b", "c"])
    once, live = (distillery.born_again(make_mlp, data, generations=1, epochs=3, batch_size=8, progress=False,
                                        teacher_once=flag, seed=3) for flag in (True, False))
    for mine, theirs in zip(once.model.parameters(), live.model.parameters()):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options, error, fragment", [
    ({"method": "fitnet"}, ConfigError, "logit method"),
    ({"method": "hinton", "method_options": {"beta": 1.0}}, ConfigError, "does not take beta"),
    ({"generations": 0}, ConfigError, "generations must be"),
])
def test_born_again_refuses_bad_settings_before_training(options, error, fragment):
    settings = {"generations": 1, **options}
    with pytest.raises(error, match=fragment):
        distillery.born_again(make_mlp, [(None, None)], epochs=1, progress=False, **settings)


def test_a_factory_that_returns_the_same_model_is_refused():
    shared = make_mlp()
    with pytest.raises(ModelError, match="new model on every call"):
        distillery.born_again(lambda: shared, tiny_data(), generations=1, epochs=1, progress=False)


def test_logit_methods_are_the_single_teacher_methods():
    # Born-again generations use the methods that declare it; they are exactly those on one teacher's logits.
    registered = {name for name in method_names() if issubclass(method_class(name), SingleTeacherMethod)}
    assert registered == set(logit_methods()) == {"hinton", "logit_mse", "dkd", "dist"}


# ---------------------------------------------------------------- born-again: a config run on digits


def test_born_again_run_saves_every_generation_and_each_loads_to_its_recorded_accuracy(tmp_path):
    # alpha = 0: generations 1 and 2 never see a label, so whatever they know came through their teacher.
    config = build_config(run_config(tmp_path / "run", model={"name": "mlp", "hidden": [16]},
                                     data={"dataset": "digits", "val_fraction": 0.15},
                                     train={"epochs": 6, "batch_size": 64, "lr": 0.01},
                                     distill={"method": "hinton", "generations": 2, "temperature": 2.0, "alpha": 0.0}))
    run_dir = run(config)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    summaries = evaluation["generations"]
    print("born-again on digits, test accuracy and agreement with the generation before:",
          [(round(s["accuracy"], 3), round(s.get("agreement", 1.0), 3)) for s in summaries])
    assert [s["generation"] for s in summaries] == [0, 1, 2]
    for summary in summaries:
        generation_dir = run_dir / summary["checkpoint"]
        assert generation_dir == run_dir / "generations" / f"gen{summary['generation']}"
        measured = evaluate_checkpoint(generation_dir, latency=False)
        assert measured["accuracy"] == pytest.approx(summary["accuracy"])
        assert summary["accuracy"] > 0.75  # chance is 0.1
        metadata = json.loads((generation_dir / "model.json").read_text())
        assert metadata["generation"] == summary["generation"]
        assert metadata["role"] == ("scratch" if summary["generation"] == 0 else "distilled")
        if summary["generation"] > 0:  # agreement with the generation before, its teacher
            previous = run_dir / "generations" / f"gen{summary['generation'] - 1}"
            with_teacher = evaluate_checkpoint(generation_dir, teacher=previous, latency=False)
            assert with_teacher["agreement"] == pytest.approx(summary["agreement"]) and summary["agreement"] > 0.85
    assert evaluation["accuracy"] == pytest.approx(summaries[-1]["accuracy"])
    last = load_file(str(run_dir / "model.safetensors"))
    gen2 = load_file(str(run_dir / "generations" / "gen2" / "model.safetensors"))
    assert last.keys() == gen2.keys() and all(torch.equal(last[key], gen2[key]) for key in last)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["generation"], r["epoch"]) for r in records] == [(g, e) for g in range(3) for e in range(1, 7)]
    assert "train/kd" not in records[0] and "train/kd" in records[-1]
    distillery.write_report([run_dir / "generations" / f"gen{g}" for g in range(3)], tmp_path / "report")


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("distill, fragment", [
    ({"method": "deep_supervision", "teacher": "runs/teacher", "student_layers": ["features.0"]},
     "deep_supervision trains without a teacher"),
    ({"method": "fitnet", "generations": 2}, "generations needs a logit method"),
    ({"method": "hinton", "generations": 2, "teacher": "runs/t", "init_from_teacher": True}, "fresh model"),
    ({"method": "hinton", "generations": 0}, "greater than or equal to 1"),
])
def test_self_distillation_config_errors(tmp_path, distill, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(run_config(tmp_path / "run", distill=distill))


def test_generations_with_a_transfer_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="remove transfer"):
        build_config(run_config(tmp_path / "run", distill={"generations": 1}, transfer={"labels": False}))


def test_cli_deep_supervision_with_a_teacher_is_one_line(tmp_path):
    output_dir = tmp_path / "run"
    config = write_yaml(tmp_path / "bad.yaml", run_config(output_dir, distill={
        "method": "deep_supervision", "teacher": str(tmp_path / "teacher"), "student_layers": ["features.0"]}))
    assert_user_error(invoke("distill", config), "distill", "deep_supervision trains without a teacher",
                      "remove distill.teacher")
    assert not output_dir.exists()
