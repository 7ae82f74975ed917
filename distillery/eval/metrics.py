"""Classification metrics as pure functions of logits and labels, and `predict` to get them.

Logits are [N, C], labels are [N] class indices; every scalar metric returns a Python float, the per-class
ones JSON-ready lists.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillery.data.batch import as_batch, counted_positions, model_logits
from distillery.errors import DataError

MAX_CONFUSION_CLASSES = 256  # above this, evaluation.json records per-class accuracy but no confusion matrix


def _check_pair(logits: Tensor, labels: Tensor, labels_name: str = "labels") -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, classes], got shape {tuple(logits.shape)}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits have {logits.shape[0]} rows but {labels_name} have {labels.shape[0]}"
        )
    if logits.shape[0] == 0:
        raise ValueError("a metric needs at least one sample, got none")


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose argmax equals the label.

    Example: `accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])) == 0.5`.
    """
    _check_pair(logits, labels)
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()


def negative_log_likelihood(logits: Tensor, labels: Tensor) -> float:
    """Mean cross-entropy in nats.

    Example: `negative_log_likelihood(torch.zeros(3, 2), torch.tensor([0, 1, 0])) == math.log(2)`.
    """
    _check_pair(logits, labels)
    # float64, so half-precision logits work on the CPU and a mean over many samples does not drift.
    return F.cross_entropy(logits.double(), labels.to(logits.device).long()).item()


def agreement(logits: Tensor, reference_logits: Tensor) -> float:
    """Share of samples where both models predict the same class (e.g. student vs teacher).

    Example: `agreement(torch.tensor([[1.0, 0.0]]), torch.tensor([[5.0, 2.0]])) == 1.0`.
    """
    if logits.shape != reference_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and reference_logits {tuple(reference_logits.shape)} differ in shape"
        )
    _check_pair(logits, reference_logits, "reference_logits")
    same = logits.argmax(dim=1) == reference_logits.to(logits.device).argmax(dim=1)
    return same.double().mean().item()


def _bin_statistics(logits: Tensor, labels: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin: (edges, count, summed correctness, summed confidence)."""
    _check_pair(logits, labels)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    probabilities = torch.softmax(logits.detach().double().cpu(), dim=1)
    confidence, prediction = probabilities.max(dim=1)
    return (torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64),
            *confidence_bins(confidence, (prediction == labels.detach().cpu()).double(), bins))


def confidence_bins(confidence: Tensor, correct: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width bin of ``confidence`` ``[N]`` (the top-1 probability, in [0, 1]): the count, the summed
    ``correct`` ``[N]`` (1 or 0) and the summed confidence, float64 ``[bins]`` each; sums over batches add up."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # Bins are (low, high]: bucketize with right=False puts a confidence equal to an inner
    # edge into the lower bin, and the first bin's open low end never matters (confidence >= 1/C).
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(confidence))
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    confidence_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    return count, correct_sum, confidence_sum


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE with equal-width bins on the max softmax probability: sum_b (n_b / N) |acc_b - conf_b|.

    Example: `expected_calibration_error(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])) == 0.0`.
    """
    _, count, correct_sum, confidence_sum = _bin_statistics(logits, labels, bins)
    # n_b/N * |acc_b - conf_b| == |correct_sum_b - confidence_sum_b| / N, and empty bins add 0.
    return ((correct_sum - confidence_sum).abs().sum() / count.sum()).item()


def reliability_bins(logits: Tensor, labels: Tensor, bins: int = 15) -> dict[str, list[Any]]:
    """The data of a reliability diagram: per confidence bin its accuracy, mean confidence and count.

    Returns `{"bin_edges": [bins + 1 floats], "accuracy": [...], "confidence": [...], "count": [...]}`
    with `None` for the accuracy and confidence of empty bins.
    Example: `reliability_bins(logits, labels, bins=10)["count"]` sums to `len(labels)`.
    """
    edges, count, correct_sum, confidence_sum = _bin_statistics(logits, labels, bins)
    counts = [int(value) for value in count.tolist()]
    return {
        "bin_edges": edges.tolist(),
        "accuracy": [c / n if n else None for c, n in zip(correct_sum.tolist(), counts)],
        "confidence": [c / n if n else None for c, n in zip(confidence_sum.tolist(), counts)],
        "count": counts,
    }


def _class_indices(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(labels, predictions) as CPU int64, checked to be class indices of the logits' columns."""
    _check_pair(logits, labels)
    classes = logits.shape[1]
    labels = labels.detach().cpu().long()
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ValueError(f"labels must be class indices 0..{classes - 1}, "
                         f"found {int(labels.min())}..{int(labels.max())}")
    return labels, logits.detach().cpu().argmax(dim=1)


def confusion_matrix(logits: Tensor, labels: Tensor) -> list[list[int]]:
    """Counts of [true class][predicted class], C x C where C is the logits' number of columns.

    Raises ValueError for a label outside 0..C-1.
    Example: `confusion_matrix(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])) == [[1, 0], [1, 0]]`.
    """
    labels, predictions = _class_indices(logits, labels)
    classes = logits.shape[1]
    counts = torch.bincount(labels * classes + predictions, minlength=classes * classes)
    return counts.reshape(classes, classes).tolist()


def per_class_results(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Per-class accuracy (recall) with sample counts, and the confusion matrix, indexed by class index.

    Returns `{"per_class": {"accuracy": [C floats, None for a class without test samples], "samples": [C ints]},
    "confusion_matrix": [[C ints] per true class]}`; the matrix only for up to MAX_CONFUSION_CLASSES (256)
    classes, as C² numbers would swamp evaluation.json. Raises ValueError as :func:`confusion_matrix`.
    Example: `per_class_results(logits, labels)["per_class"]["accuracy"][3]` is class 3's accuracy.
    """
    labels, predictions = _class_indices(logits, labels)
    classes = logits.shape[1]
    samples = torch.bincount(labels, minlength=classes).tolist()
    correct = torch.bincount(labels[predictions == labels], minlength=classes).tolist()
    accuracies = [right / count if count else None for right, count in zip(correct, samples)]
    results: dict[str, Any] = {"per_class": {"accuracy": accuracies, "samples": samples}}
    if classes <= MAX_CONFUSION_CLASSES:
        results["confusion_matrix"] = confusion_matrix(logits, labels)
    return results


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode inside the block and restore every submodule's own mode after.

    Restoring per submodule, not `model.train(previous)`, keeps a frozen teacher inside a
    training model in eval mode. Example: `with eval_mode(student): logits = student(inputs)`.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Run `model` in eval mode over labelled `batches` (anything :func:`~distillery.data.batch.as_batch` reads).

    Inputs go to `device`, by default the model's own device. Returns `(logits, labels)` on the
    CPU, logits as float32, concatenated over all batches; the model's train/eval mode is restored.
    Example: `logits, labels = predict(model, [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))])`.
    """
    target = torch.device(device) if device is not None else model_device(model)
    all_logits: list[Tensor] = []
    all_labels: list[Tensor] = []
    with eval_mode(model):
        for batch in map(as_batch, batches):
            if batch.labels is None:
                raise DataError("evaluation needs labelled batches; these batches carry no labels")
            logits = model_logits(model, batch.to(target).inputs).float().cpu()
            # One row per counted prediction: samples, or the positions a sequence batch's mask keeps.
            logits, labels = counted_positions(batch.mask, logits, batch.labels.cpu())
            labelled = labels >= 0  # positions without a label (-100, -1) are not predictions to score
            all_logits.append(logits[labelled])
            all_labels.append(labels[labelled])
    if not all_logits:
        raise DataError("predict got no batches; the evaluation data is empty")
    return torch.cat(all_logits), torch.cat(all_labels)
