"""Function matching: identical mixed views for teacher and student, KL only (Beyer et al. 2022)."""
import json

import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, write_yaml
from torch import nn

from distillery.data import Batch
from distillery.methods import create_method
from distillery.methods.function_matching import cutmix, mixup


def models(seed=0):
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return student, teacher


def test_without_mixing_the_loss_is_the_soft_target_kl_at_t_written_out():
    student, teacher = models()
    inputs = torch.randn(6, 1, 4, 4)
    method = create_method("function_matching", student, teacher, temperature=2.0, mix="none").train()
    output = method.step(Batch(inputs, torch.zeros(6, dtype=torch.long)))
    teacher_p = torch.softmax(teacher(inputs) / 2, -1)
    expected = (teacher_p * (teacher_p.log() - torch.log_softmax(student(inputs) / 2, -1))).sum(-1).mean() * 4
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(output.logs) == {"kd"}  # no label term, whatever the batch carries


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_teacher_and_student_see_the_identical_mixed_view(mix):
    student, teacher = models()
    seen = {}
    student.register_forward_pre_hook(lambda module, args: seen.__setitem__("student", args[0].clone()))
    teacher.register_forward_pre_hook(lambda module, args: seen.__setitem__("teacher", args[0].clone()))
    inputs = torch.randn(8, 1, 4, 4)
    method = create_method("function_matching", student, teacher, mix=mix).train()
    changed = 0
    for seed in range(5):  # a cutmix rectangle may be drawn empty: over a few steps most views are mixed
        torch.manual_seed(seed)
        method.step(Batch(inputs))
        assert torch.equal(seen["student"], seen["teacher"])
        changed += not torch.equal(seen["student"], inputs)
    assert changed >= 3


def test_mixup_blends_pairs_with_uniform_weights_and_cutmix_pastes_pixels_in_place():
    torch.manual_seed(0)
    inputs = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 3, 3).contiguous()  # sample i is all i
    mixed = mixup(inputs)
    assert bool((mixed >= 0).all() and (mixed <= 3).all())
    assert all(len(sample.unique()) == 1 for sample in mixed)  # one weight per sample, the same everywhere in it
    pasted = cutmix(inputs)
    assert set(pasted.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    with pytest.raises(Exception, match="use mix: mixup"):
        cutmix(torch.zeros(4, 5))


def test_function_matching_runs_from_a_config_with_a_live_teacher_and_refuses_alpha(tmp_path, teacher_run):
    config = write_yaml(tmp_path / "run.yaml", run_config(
        tmp_path / "student", data={"augment": {"shift": 1}}, progress=True,
        distill={"teacher": str(teacher_run), "method": "function_matching", "temperature": 1.0}))
    result = invoke("distill", str(config))
    assert_ok(result)
    record = json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[0])
    assert "train/kd" in record and "train/ce" not in record
    with_alpha = write_yaml(tmp_path / "alpha.yaml", run_config(
        tmp_path / "alpha-run", distill={"teacher": str(teacher_run), "method": "function_matching",
                                         "alpha": 0.5}))
    assert_user_error(invoke("distill", str(with_alpha)), "does not take alpha")


def test_a_mixed_view_fixes_the_augmentation_the_partner_and_the_weight():
    from distillery.data import ArrayDataset, Augmentation
    from distillery.data.views import augmented_views

    dataset = ArrayDataset(torch.rand(10, 1, 4, 4), torch.arange(10) % 3, ["a", "b", "c"], "toy")
    plain = Augmentation(0, 0, False)
    first, second = augmented_views(dataset, plain, 2, seed=3, mix="mixup")
    generator = torch.Generator().manual_seed(3 * 1000003)  # view 0's draws, in the order they are made
    weights = torch.rand(10, 1, 1, 1, generator=generator)
    partners = torch.randperm(10, generator=generator)
    assert torch.allclose(first.inputs, weights * dataset.inputs + (1 - weights) * dataset.inputs[partners])
    assert not torch.allclose(first.inputs, second.inputs)
    again = augmented_views(dataset, plain, 2, seed=3, mix="mixup")
    assert torch.equal(again[1].inputs, second.inputs)
    with pytest.raises(Exception, match="cutmix runs live"):
        augmented_views(dataset, plain, 2, seed=3, mix="cutmix")


def test_function_matching_on_cached_mixed_views_reads_the_teachers_outputs_on_those_views(tmp_path, teacher_run):
    from distillery.app.config.files import build_config
    from distillery.app.steps.load_teachers import teachers_and_data
    from distillery.app.steps.transfer_batches import transfer_plan

    config = build_config(run_config(tmp_path / "run", distill={"teacher": str(teacher_run),
                                                                "method": "function_matching", "teacher_views": 3}))
    teachers, data, teacher = teachers_and_data(config)
    plan = transfer_plan(config, data, teachers, teacher)
    assert len(plan.teacher_logits) == 3 * len(data.train)  # one row per sample of each of the 3 views
    method = create_method("function_matching", *models(), mix="mixup")
    method.use_precomputed_teacher_logits(plan.teacher_logits)
    plan.batches.set_epoch(2)  # the second view
    batch = next(iter(plan.batches))
    assert int(batch.indices.min()) >= len(data.train)  # indices address the second view's rows of the cache
    with torch.no_grad():
        expected = teacher(batch.inputs)
    assert torch.allclose(plan.teacher_logits[batch.indices].float(), expected, atol=1e-2)
    assert torch.equal(method.train().view(batch.inputs), batch.inputs)  # views come mixed: not mixed again
    # Without teacher_views the teacher runs live on fresh mixtures; other methods still need augmentation.
    live = build_config(run_config(tmp_path / "live", distill={"teacher": str(teacher_run),
                                                               "method": "function_matching"}))
    assert transfer_plan(live, data, teachers, teacher).teacher_logits is None
    assert_user_error(invoke("distill", write_yaml(tmp_path / "hinton.yaml", run_config(
        tmp_path / "hinton", distill={"teacher": str(teacher_run), "method": "hinton", "teacher_views": 2}))),
        "data.augment is off")
