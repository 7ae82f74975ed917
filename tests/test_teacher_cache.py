"""The teacher-output cache: fingerprints, float16 memory-mapped tables, top-k, stale caches, augmented views."""
import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_ok, assert_user_error, invoke, run_config, write_yaml
from torch import nn

from distillery.app.config.files import build_config
from distillery.app.steps.fit import fit_method
from distillery.app.workflows.run import run
from distillery.app.steps.transfer_batches import plan_transfer
from distillery.data import ArrayDataset, Augmentation, BatchIterator
from distillery.data.views import ViewBatches, augmented_views
from distillery.errors import CheckpointError
from distillery.methods import create_method
from distillery.teachers.cache import (
    CacheFiles,
    LogitTable,
    cached_teacher_logits,
    compress_top_k,
    expand_top_k,
    fingerprint,
    open_cache,
    write_cache,
)
from distillery.teachers.label_space import LabelSpaceMerge
from distillery.teachers.precomputed import precompute_logits


def images(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(count, 1, 6, 6, generator=generator), torch.arange(count) % 3, ["a", "b", "c"])


def teacher(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()


def test_fingerprint_changes_with_data_weights_and_preprocessing_only():
    data, model = images(), teacher()
    base = fingerprint(data.inputs, model, {"mean": [0.5]})
    assert fingerprint(data.inputs.clone(), teacher(), {"mean": [0.5]}) == base
    assert fingerprint(images(seed=1).inputs, model, {"mean": [0.5]})["data"] != base["data"]
    assert fingerprint(data.inputs, teacher(seed=1), {"mean": [0.5]})["teacher"] != base["teacher"]
    assert fingerprint(data.inputs, model, {"mean": [0.4]})["preprocessing"] != base["preprocessing"]
    changed = fingerprint(data.inputs, teacher(seed=1), {"mean": [0.5]})
    assert changed["data"] == base["data"] and changed["preprocessing"] == base["preprocessing"]


def test_fingerprint_tells_merged_teachers_apart_by_their_class_layout_and_reads_any_dtype():
    inputs = torch.rand(4, 1)
    members = [nn.Linear(1, 2), nn.Linear(1, 2)]
    merge = LabelSpaceMerge(members, [["a", "b"], ["c", "d"]], ["a", "b", "c", "d"])
    reordered = LabelSpaceMerge(members, [["a", "b"], ["c", "d"]], ["c", "d", "a", "b"])
    assert fingerprint(inputs, merge, None)["teacher"] != fingerprint(inputs, reordered, None)["teacher"]
    assert fingerprint(inputs, teacher().to(torch.bfloat16), None)["teacher"] != fingerprint(inputs, teacher(), None)["teacher"]


def test_cache_round_trip_is_float16_memory_mapped_and_indexed_by_sample(tmp_path):
    data, model = images(), teacher()
    logits = precompute_logits(model, BatchIterator(data, 16), len(data)) * 5
    parts = fingerprint(data.inputs, model, None)
    files = CacheFiles(tmp_path / "cache")
    write_cache(files, logits, parts)
    table = open_cache(files, parts)
    assert isinstance(table.array, np.memmap) and table.array.dtype == np.float16
    indices = torch.tensor([7, 0, 39])
    looked_up = table[indices]
    assert looked_up.dtype == torch.float32
    assert torch.allclose(looked_up, logits[indices], rtol=1e-3, atol=1e-3)   # float16: ~3 significant digits
    assert json.loads(files.manifest.read_text())["fingerprint"] == parts


def test_a_stale_cache_is_refused_naming_what_changed(tmp_path):
    data = images()
    files = CacheFiles(tmp_path / "cache")
    write_cache(files, torch.zeros(len(data), 3), fingerprint(data.inputs, teacher(), None))
    with pytest.raises(CheckpointError, match="built for different teacher weights; rebuild it"):
        open_cache(files, fingerprint(data.inputs, teacher(seed=1), None))
    with pytest.raises(CheckpointError, match="built for different transfer data"):
        open_cache(files, fingerprint(images(seed=2).inputs, teacher(), None))
    files.manifest.write_text("{}")
    with pytest.raises(CheckpointError, match="not a distillery teacher cache"):
        open_cache(files, fingerprint(data.inputs, teacher(), None))


def test_top_k_keeps_the_teachers_top_classes_exactly_and_the_rest_of_the_mass():
    logits = torch.randn(5, 300) * 3
    expanded = expand_top_k(compress_top_k(logits, 20), 300, 20)
    teacher_probs, cached_probs = torch.softmax(logits, -1), torch.softmax(expanded, -1)
    top = teacher_probs.topk(20, dim=-1).indices
    assert torch.allclose(cached_probs.gather(1, top), teacher_probs.gather(1, top), atol=1e-6)
    assert torch.allclose(cached_probs.sum(-1), torch.ones(5), atol=1e-5)
    rest = torch.ones_like(teacher_probs, dtype=torch.bool).scatter_(1, top, False)
    assert torch.allclose(cached_probs[rest].view(5, -1).sum(-1), teacher_probs[rest].view(5, -1).sum(-1), atol=1e-5)


def test_many_classes_are_cached_as_top_k(tmp_path):
    inputs = torch.rand(8, 4)
    logits = torch.randn(8, 150)
    files = CacheFiles(tmp_path / "wide")
    parts = fingerprint(inputs, teacher(), None)
    write_cache(files, logits, parts)
    table = open_cache(files, parts)
    assert table.array.shape == (8, 40) and table.top_k == 20
    assert torch.equal(table[torch.tensor([3])].argmax(-1), logits[3:4].argmax(-1))


def test_automatic_cache_is_built_once_then_read(tmp_path):
    data, model = images(), teacher()
    first, note = cached_teacher_logits(model, data.inputs, BatchIterator(data, 16), len(data), stem=None,
                                        preprocessing=None, cache_dir=tmp_path)
    assert "computed once and cached" in note and isinstance(first, LogitTable)
    second, note = cached_teacher_logits(model, data.inputs, iter(()), len(data), stem=None, preprocessing=None,
                                         cache_dir=tmp_path)
    assert "read from the cache" in note
    assert torch.equal(first[torch.arange(len(data))], second[torch.arange(len(data))])


# ---------------------------------------------------------------- augmented views


def test_views_are_seeded_distinct_and_cycled_by_epoch():
    data = images()
    augmentation = Augmentation(shift=1, flip=True)
    views = augmented_views(data, augmentation, count=3, seed=0)
    again = augmented_views(data, augmentation, count=3, seed=0)
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip(views, again))
    assert not torch.equal(views[0].inputs, views[1].inputs)
    batches = ViewBatches(views, 16, shuffle=True, seed=0)
    for epoch, view in [(1, 0), (2, 1), (3, 2), (4, 0)]:
        batches.set_epoch(epoch)
        for inputs, labels, indices in batches:
            local = indices - view * len(data)
            assert bool((local >= 0).all() and (local < len(data)).all())
            assert torch.equal(inputs, views[view].inputs[local]) and torch.equal(labels, data.labels[local])


def test_with_views_the_teacher_runs_once_per_view_and_never_while_training(tmp_path):
    data, model = images(), teacher()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    plan = plan_transfer(data, model, augmentation=Augmentation(shift=1), transform=None, batch_size=8, seed=0,
                         label_options={}, teacher_table=True, views=2, cache_dir=tmp_path)
    assert sum(calls) == 2 * len(data)                        # once per image of each view
    table = plan.teacher_logits
    # The row of view 1, sample 5 is the teacher's output on exactly the image the student sees then.
    plan.batches.set_epoch(2)
    inputs, _, indices = next(iter(plan.batches))
    assert torch.allclose(table[indices], model(inputs), atol=1e-2)
    calls.clear()
    method = create_method("hinton", nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), model, temperature=2.0)
    method.use_precomputed_teacher_logits(table)
    fit_method(method, plan.batches, epochs=3, progress=False)
    assert calls == []


# ---------------------------------------------------------------- through a run and the CLI


def test_second_run_reads_the_cache_and_gets_the_same_student(tmp_path, teacher_run, capsys):
    def student(name):
        config = run_config(tmp_path / name, distill={"teacher": str(teacher_run), "temperature": 2.0,
                                                      "teacher_cache": str(tmp_path / "cache")})
        return run(build_config({**config, "progress": True}))

    first = json.loads((student("first") / "evaluation.json").read_text())
    assert "computed once and cached" in capsys.readouterr().err
    second = json.loads((student("second") / "evaluation.json").read_text())
    assert "read from the cache" in capsys.readouterr().err
    assert first["accuracy"] == second["accuracy"] and first["nll"] == second["nll"]


def test_cache_command_builds_and_a_stale_cache_stops_the_run_untouched(tmp_path, teacher_run, npz_teacher_run):
    stem = tmp_path / "explicit"
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path / "out", distill={
        "teacher": str(teacher_run), "teacher_cache": str(stem)}))
    result = invoke("cache", config)
    assert_ok(result)
    assert "computed once and cached" in result.stdout and (tmp_path / "explicit.npy").is_file()
    assert "read from the cache" in invoke("cache", config).stdout
    # Another teacher's outputs under the same name: refused, and the run directory is never created.
    write_cache(CacheFiles(stem), torch.zeros(10, 10), {"data": "x", "teacher": "y", "preprocessing": "z"})
    assert_user_error(invoke("distill", config), "teacher cache", "was built for different", "--rebuild")
    assert not (tmp_path / "out").exists()
    assert "computed once and cached" in invoke("cache", config, "--rebuild").stdout


@pytest.mark.parametrize("distill, data, fragment", [
    ({"teacher_cache": "off"}, None, "teacher_cache is off"),
    ({"method": "fitnet", "student_layer": "features.0"}, None, "set distill.teacher_layer (fitnet)"),
    ({}, {"dataset": "digits", "augment": {"shift": 1}}, "set distill.teacher_views"),
    ({"teacher_views": 2}, None, "data.augment is off"),
])
def test_cache_command_explains_what_cannot_be_cached(tmp_path, teacher_run, distill, data, fragment):
    document = run_config(tmp_path / "out", distill={"teacher": str(teacher_run), **distill})
    if data is not None:
        document["data"] = data
    assert_user_error(invoke("cache", write_yaml(tmp_path / "run.yaml", document)), fragment)
