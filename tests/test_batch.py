"""The step contract: one Batch type for tensors and mappings of tensors, labels per sample or per position,
a mask of what counts, sample indices; through methods, trainer, cache, sharding and evaluation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery.app.steps.evaluation import evaluate
from distillery.app.steps.fit import fit_method
from distillery.data import Batch, BatchIterator, as_batch, counted_positions, model_logits
from distillery.engine.distributed import ShardedBatches
from distillery.engine.trainer import validate
from distillery.errors import DataError
from distillery.methods import create_method
from distillery.teachers.precomputed import precompute_logits

VOCAB, CLASSES, POSITIONS = 11, 5, 6


class TokenTagger(nn.Module):
    """A per-position classifier called like a Hugging Face model: keyword tensors in, ``.logits`` out."""

    class Output:
        def __init__(self, logits):
            self.logits = logits

    def __init__(self, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, input_ids, attention_mask):
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.Output(self.head(hidden))


def token_batches(count: int = 4, size: int = 6, seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for number in range(count):
        input_ids = torch.randint(0, VOCAB, (size, POSITIONS), generator=generator)
        lengths = torch.randint(2, POSITIONS + 1, (size,), generator=generator)
        mask = torch.arange(POSITIONS)[None, :] < lengths[:, None]
        labels = (input_ids % CLASSES).masked_fill(~mask, -100)  # a learnable per-token rule
        batches.append(Batch({"input_ids": input_ids, "attention_mask": mask.long()}, labels, mask,
                             torch.arange(number * size, (number + 1) * size)))
    return batches


def test_as_batch_reads_every_accepted_form_and_names_a_wrong_one():
    inputs, labels, indices = torch.zeros(3, 2), torch.tensor([0, 1, 0]), torch.arange(3)
    assert as_batch(inputs).labels is None and as_batch(inputs).inputs is inputs
    assert as_batch((inputs,)).labels is None
    assert as_batch((inputs, labels)).labels is labels and as_batch((inputs, labels)).indices is None
    assert as_batch([inputs, labels, indices]).indices is indices
    mapping = as_batch({"input_ids": inputs, "labels": labels})
    assert set(mapping.inputs) == {"input_ids"} and mapping.labels is labels and mapping.size == 3
    batch = Batch(inputs, labels)
    assert as_batch(batch) is batch
    unpacked_inputs, unpacked_labels, unpacked_indices = Batch(inputs, labels, indices=indices)
    assert unpacked_inputs is inputs and unpacked_labels is labels and unpacked_indices is indices
    with pytest.raises(DataError, match="a batch must be"):
        as_batch("not a batch")
    with pytest.raises(DataError, match="empty mapping"):
        Batch({}).size


def test_rows_and_to_keep_indices_on_the_cpu_and_cut_every_part():
    batch = token_batches(1)[0]
    part = batch.rows(slice(2, 4))
    assert part.size == 2 and part.labels.shape == (2, POSITIONS) and part.mask.shape == (2, POSITIONS)
    assert torch.equal(part.inputs["input_ids"], batch.inputs["input_ids"][2:4])
    assert part.indices.tolist() == batch.indices[2:4].tolist()
    moved = batch.to("meta")
    assert moved.inputs["input_ids"].device.type == "meta" and moved.indices.device.type == "cpu"


def test_counted_positions_flattens_and_keeps_only_masked_positions():
    logits = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    labels = torch.tensor([[1, 0, -100], [0, -100, -100]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    flat, flat_labels = counted_positions(mask, logits, labels)
    # Hand-picked: positions (0,0), (0,1), (1,0) in row-major order.
    assert flat.tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]] and flat_labels.tolist() == [1, 0, 0]
    same, none = counted_positions(None, logits[:, 0], None)
    assert same is not None and torch.equal(same, logits[:, 0]) and none is None
    with pytest.raises(DataError, match="line up"):
        counted_positions(mask, logits, labels[:, :2])


def test_hinton_over_positions_averages_the_kl_over_counted_tokens_only():
    teacher, student = TokenTagger(seed=1), TokenTagger(seed=2)
    batch = token_batches(1)[0]
    temperature, alpha = 2.0, 0.25
    method = create_method("hinton", student, teacher, temperature=temperature, alpha=alpha)
    output = method.step(batch)
    # The same loss written out: per-position KL(teacher || student) at T, times T², averaged over counted positions.
    student_logits = student(**batch.inputs).logits
    teacher_logits = teacher(**batch.inputs).logits
    kl = (F.softmax(teacher_logits / temperature, -1)
          * (F.log_softmax(teacher_logits / temperature, -1) - F.log_softmax(student_logits / temperature, -1))).sum(-1)
    soft = (kl * batch.mask).sum() / batch.mask.sum() * temperature ** 2
    hard = F.cross_entropy(student_logits[batch.mask], batch.labels[batch.mask])
    assert output.logs["kd"].item() == pytest.approx(soft.item(), rel=1e-5)
    assert output.loss.item() == pytest.approx((alpha * hard + (1 - alpha) * soft).item(), rel=1e-5)
    # Padding carries no weight: changing what sits there leaves the loss unchanged.
    padded = batch.inputs["input_ids"].masked_fill(~batch.mask, 3)
    again = method.step(Batch({**batch.inputs, "input_ids": padded}, batch.labels, batch.mask, batch.indices))
    assert again.loss.item() == pytest.approx(output.loss.item(), rel=1e-6)


def test_a_cached_teacher_over_positions_gives_the_live_step():
    teacher, student = TokenTagger(seed=1), TokenTagger(seed=2)
    batches = token_batches(3)
    table = precompute_logits(teacher, batches, size=18)
    assert table.shape == (18, POSITIONS, CLASSES)
    live = create_method("hinton", student, teacher, temperature=3.0, alpha=0.5)
    cached = create_method("hinton", student, teacher, temperature=3.0, alpha=0.5)
    cached.use_precomputed_teacher_logits(table)
    for batch in batches:
        assert cached.step(batch).loss.item() == pytest.approx(live.step(batch).loss.item(), rel=1e-6)


def test_training_on_token_batches_learns_and_validates_counted_positions_only():
    batches = token_batches(8)
    before = validate(TokenTagger(seed=3), batches, torch.device("cpu"))["val/accuracy"]
    result = fit_method(create_method("supervised", TokenTagger(seed=3)), batches, batches, epochs=15, lr=0.05,
                        device="cpu", progress=False)
    assert result.metrics["val/accuracy"] > max(0.9, before + 0.3)
    counted = int(sum(batch.mask.sum() for batch in batches))
    metrics = evaluate(result.model, batches)
    assert metrics["samples"] == counted  # one prediction per counted position, none for padding


def test_shards_of_a_mapping_batch_put_together_are_the_batch():
    batch = token_batches(1, size=7)[0]
    shards = [next(iter(ShardedBatches([batch], rank, 3, training=True))) for rank in range(3)]
    assert [shard.size for shard in shards] == [3, 2, 2]
    for key in batch.inputs:
        assert torch.equal(torch.cat([shard.inputs[key] for shard in shards]), batch.inputs[key])
    assert torch.equal(torch.cat([shard.mask for shard in shards]), batch.mask)
    assert torch.equal(torch.cat([shard.indices for shard in shards]), batch.indices)


def test_model_logits_reads_tensors_mappings_and_names_a_model_without_logits():
    linear = nn.Linear(3, 2)
    assert model_logits(linear, torch.zeros(4, 3)).shape == (4, 2)

    class Silent(nn.Module):
        def forward(self, inputs):
            return "nothing"

    with pytest.raises(DataError, match="Silent returned str, not logits"):
        model_logits(Silent(), torch.zeros(1, 3))


def test_batch_iterator_yields_batches_with_indices():
    from distillery.data import ArrayDataset

    dataset = ArrayDataset(torch.arange(10, dtype=torch.float32).reshape(5, 2), torch.tensor([0, 1, 0, 1, 0]), ["a", "b"])
    batches = list(BatchIterator(dataset, 2))
    assert all(isinstance(batch, Batch) for batch in batches)
    assert torch.cat([batch.indices for batch in batches]).tolist() == [0, 1, 2, 3, 4]
