"""The Python API on in-memory objects: train, distill and evaluate a user's own modules and data.

Example::

    import distillery
    teacher = distillery.train(teacher_net, train_loader, val_loader, epochs=10).model
    result = distillery.distill(teacher, student_net, train_loader, val_loader, temperature=4.0, alpha=0.1)
    print(distillery.evaluate(result.model, test_loader, teacher=teacher))
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from distillery.data import ArrayDataset, BatchIterator
from distillery.engine import Trainer, build_optimizer, build_scheduler, compile_student, peer_record, resolve_device
from distillery.engine.distributed import setup_distributed
from distillery.errors import ConfigError, DataError
from distillery.eval.latency import measure_latency
from distillery.eval.metrics import (
    accuracy,
    agreement,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_results,
    predict,
    reliability_bins,
)
from distillery.methods import Method, create_method
from distillery.models import count_parameters, size_on_disk_bytes
from distillery.teachers.frozen import left_as_found
from distillery.teachers.precomputed import precompute_logits


@dataclass
class Result:
    """A trained model (its best-on-validation weights), its per-epoch history and best validation metrics.

    ``peers`` holds, by name, the models an online method trained beside the student, each a Result of
    its own: its best weights by its own validation accuracy, and its part of every epoch's record.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    peers: dict[str, "Result"] = field(default_factory=dict)


def as_batches(data: Any, batch_size: int, shuffle: bool, seed: int) -> Iterable:
    """An ArrayDataset becomes a seeded BatchIterator; any re-iterable of batches (a DataLoader) is used as is."""
    if isinstance(data, ArrayDataset):
        return BatchIterator(data, batch_size=batch_size, shuffle=shuffle, seed=seed)
    if not hasattr(data, "__iter__") or isinstance(data, torch.Tensor):
        raise DataError(f"data must be an ArrayDataset or an iterable of (inputs, labels) batches, got {type(data).__name__}")
    if iter(data) is data:
        raise DataError("data is a one-shot iterator (a generator?); pass something iterable once per epoch, "
                        "such as a DataLoader or a list of batches")
    return data


def fit_method(method: Method, train_data: Any, val_data: Any = None, *, epochs: int = 10, lr: float = 1e-3,
               optimizer: str = "adamw", weight_decay: float = 5e-4, momentum: float = 0.9,
               schedule: str = "cosine", batch_size: int = 128, seed: int = 0, device: str = "auto",
               progress: bool = True, on_epoch_end=None, description: str = "train", precision: str = "fp32",
               compile: bool = False, grad_clip: float | None = None, checkpointer=None, resume=None) -> Result:
    """Train any Method; :func:`train` and :func:`distill` are this with a method chosen for you.

    ``precision="bf16"`` runs each step under bfloat16 autocast; ``compile=True`` compiles the student
    with torch.compile. Neither changes what is saved. ``grad_clip`` caps the gradients' global norm.
    Under torchrun it trains data-parallel: ``batch_size`` (or the given loader's) is the global batch.
    ``checkpointer`` (an :class:`distillery.engine.training_state.Checkpointer`) saves the full training
    state as training goes (under torchrun, give every process one: they stop and save together);
    ``resume`` (a state read with ``read_training_state``) continues from one.
    """
    context = setup_distributed(device)
    train_batches = context.shard(as_batches(train_data, batch_size, shuffle=True, seed=seed), training=True)
    val_batches = (context.shard(as_batches(val_data, max(batch_size, 512), shuffle=False, seed=seed), training=False)
                   if val_data is not None else None)
    steps_per_epoch = _steps_per_epoch(train_batches, schedule)
    target = context.place(resolve_device(device))
    method.to(target)
    if compile:
        compile_student(method)
    opt = build_optimizer(method.trainable_parameters(), optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum)
    scheduler = build_scheduler(opt, schedule, total_steps=epochs * steps_per_epoch)
    trainer = Trainer(method, opt, scheduler, epochs=epochs, device=target, progress=progress and context.is_main,
                      description=description, precision=precision, grad_clip=grad_clip, distributed=context)
    fitted = trainer.fit(train_batches, val_batches, on_epoch_end=on_epoch_end, checkpointer=checkpointer,
                         resume=resume)
    method.student.load_state_dict(fitted.best_state)
    peers = {}
    for name, peer in method.peer_models().items():
        best = fitted.peers[name]
        peer.load_state_dict(best.state)
        peers[name] = Result(model=peer, history=[peer_record(record, name) for record in fitted.history],
                             metrics=best.metrics, best_epoch=best.epoch)
    return Result(model=method.student, history=fitted.history, metrics=fitted.best_metrics,
                  best_epoch=fitted.best_epoch, peers=peers)


def _steps_per_epoch(batches: Iterable, schedule: str) -> int:
    # Per-step schedules must know the run's length up front; a constant one does not.
    try:
        return len(batches)
    except TypeError:
        if schedule == "constant":
            return 1
        raise DataError(f"the training data ({type(batches).__name__}) has no length, which the {schedule!r} "
                        "schedule needs; pass a sized DataLoader or list, or schedule='constant'") from None


def train(model: nn.Module, train_data: Any, val_data: Any = None, *, label_smoothing: float = 0.0,
          seed: int = 0, **options: Any) -> Result:
    """Train ``model`` on labels (a teacher, or a student from scratch).

    ``train_data`` is an ArrayDataset or any re-iterable of (inputs, labels) batches, e.g. a DataLoader.
    Options: epochs, lr, optimizer ("adamw"/"sgd"), weight_decay, schedule ("cosine"/"onecycle"/"constant"),
    batch_size, device, progress, precision ("fp32"/"bf16"), compile, grad_clip.

    Example::

        result = distillery.train(net, train_loader, val_loader, epochs=5)
    """
    torch.manual_seed(seed)
    method = create_method("supervised", model, label_smoothing=label_smoothing)
    return fit_method(method, train_data, val_data, seed=seed, **options)


def distill(teacher: nn.Module, student: nn.Module, train_data: Any, val_data: Any = None, *,
            method: str = "hinton", temperature: float | None = None, alpha: float | None = None,
            label_smoothing: float = 0.0, method_options: dict[str, Any] | None = None, seed: int = 0,
            teacher_once: bool = True, **options: Any) -> Result:
    """Distil ``teacher`` into ``student``: the teacher is frozen and kept in eval mode, only the student trains.

    ``method``: "hinton" (soft targets at ``temperature``, KL·T², plus ``alpha`` · hard-label CE at T=1;
    defaults T=4, alpha=0.5), "logit_mse" (alpha · CE + (1 − alpha) · MSE between logits), "dkd" or
    "dist". Further method keywords (``standardize``, ``nckd_weight``, ...) go in ``method_options``;
    None means the method's default. Training options as for :func:`train`.

    ``alpha`` weighs the hard-label term and 1 − alpha the soft term on every batch; batches without labels
    have no hard term (pass ``alpha=0`` for an unlabeled transfer set). The caller's ``teacher`` is frozen and
    moved only while this runs: afterwards its ``requires_grad`` flags, modes and device are as they were.

    When ``train_data`` is an ArrayDataset (fixed inputs, known sample indices), or a BatchIterator over one
    with augmentation off, the teacher runs once over it before training and its logits are looked up by
    index every epoch (``teacher_once=False`` runs it live on every batch instead). Other data, such as a
    DataLoader, always meets the live teacher.

    Example::

        result = distillery.distill(teacher, student, train_loader, val_loader, temperature=4.0, alpha=0.1)
        student = result.model
    """
    torch.manual_seed(seed)
    with left_as_found(teacher):
        built = create_method(method, student, teacher, temperature=temperature, alpha=alpha,
                              label_smoothing=label_smoothing, **(method_options or {}))
        if teacher_once:
            run_teacher_once(built, teacher, train_data, options.get("device", "auto"))
        return fit_method(built, train_data, val_data, seed=seed, description="distill", **options)


def run_teacher_once(method: Method, teacher: nn.Module, train_data: Any, device: str = "auto") -> None:
    """Give ``method`` the teacher's logits over a deterministic transfer set (an ArrayDataset, or a
    BatchIterator whose augmentation is off), placed by sample index; other data (a DataLoader, augmented
    batches) leaves the teacher running live."""
    if isinstance(train_data, ArrayDataset):
        dataset, transform = train_data, None
    elif isinstance(train_data, BatchIterator) and (train_data.augmentation is None
                                                    or not train_data.augmentation.enabled):
        dataset, transform = train_data.dataset, train_data.transform
    else:
        return
    if hasattr(method, "use_precomputed_teacher_logits"):
        teacher.to(resolve_device(device))
        method.use_precomputed_teacher_logits(
            precompute_logits(teacher, BatchIterator(dataset, 512, transform=transform), len(dataset)))


def mutual(models: Sequence[nn.Module], train_data: Any, val_data: Any = None, *, temperature: float | None = None,
           alpha: float | None = None, label_smoothing: float = 0.0, seed: int = 0, **options: Any) -> Result:
    """Deep mutual learning: train ``models`` together from scratch, each distilling from the others' predictions.

    ``models[0]`` is the student (``result.model``); the others are its peers, in ``result.peers`` as
    ``peer1``, ``peer2``, ... with their own best weights. Each model minimises
    ``alpha · CE + (1 − alpha) · T² · mean KL(other ‖ itself)`` (defaults T=1, alpha=0.5).
    Training options as for :func:`train`.

    Example::

        result = distillery.mutual([small_net, other_net], train_loader, val_loader, epochs=10)
        student, peer = result.model, result.peers["peer1"].model
    """
    if len(models) < 2:
        raise ConfigError(f"mutual learning trains at least two models together; got {len(models)}: "
                          "pass [student, peer, ...]")
    torch.manual_seed(seed)
    built = create_method("mutual", models[0], peers=list(models[1:]), temperature=temperature, alpha=alpha,
                          label_smoothing=label_smoothing)
    return fit_method(built, train_data, val_data, seed=seed, description="mutual", **options)


def distill_online(teacher: nn.Module, student: nn.Module, train_data: Any, val_data: Any = None, *,
                   temperature: float | None = None, alpha: float | None = None, label_smoothing: float = 0.0,
                   seed: int = 0, **options: Any) -> Result:
    """Train an untrained ``teacher`` on labels and distil it into ``student`` at the same time.

    The student minimises ``alpha · CE + (1 − alpha) · T² · KL(teacher ‖ student)`` against the teacher's
    current predictions (defaults T=4, alpha=0.5); the teacher learns from labels alone. The trained
    teacher is ``result.peers["teacher"]``. Training options as for :func:`train`.

    Example::

        result = distillery.distill_online(big_net, small_net, train_loader, val_loader, epochs=10)
        student, teacher = result.model, result.peers["teacher"].model
    """
    torch.manual_seed(seed)
    built = create_method("online", student, teacher_model=teacher, temperature=temperature, alpha=alpha,
                          label_smoothing=label_smoothing)
    return fit_method(built, train_data, val_data, seed=seed, description="online", **options)


def evaluate(model: nn.Module, data: Any, *, teacher: nn.Module | None = None, latency: bool = False,
             batch_size: int = 512, bins: int = 15) -> dict[str, Any]:
    """Accuracy, NLL, expected calibration error, a reliability table, per-class accuracy and the confusion
    matrix (``per_class``, ``confusion_matrix``: rows the true class), size, and optionally agreement with a
    teacher and CPU latency (with threads, CPU, torch version and whether it was stable).

    Example::

        metrics = distillery.evaluate(student, test_loader, teacher=teacher, latency=True)
    """
    batches = as_batches(data, batch_size, shuffle=False, seed=0)
    logits, labels = predict(model, batches)
    if labels.numel() == 0:
        raise DataError("the evaluation data is empty")
    metrics: dict[str, Any] = {
        "samples": int(labels.numel()),
        "accuracy": accuracy(logits, labels),
        "nll": negative_log_likelihood(logits, labels),
        "ece": expected_calibration_error(logits, labels, bins=bins),
        "parameters": count_parameters(model),
        "size_bytes": size_on_disk_bytes(model),
    }
    if teacher is not None:
        teacher_logits, _ = predict(teacher, batches)
        metrics["agreement"] = agreement(logits, teacher_logits)
    if latency:
        sample_shape = next(iter(batches))[0].shape[1:]
        # Measured on a CPU copy so the caller's model stays on its device.
        metrics["latency"] = measure_latency(copy.deepcopy(model).cpu(), tuple(sample_shape))
    metrics["reliability"] = reliability_bins(logits, labels, bins=bins)
    metrics.update(per_class_results(logits, labels))  # per_class (accuracy, samples), confusion_matrix
    return metrics
