"""The Python API on in-memory objects: train, distill and evaluate a user's own modules and data.

Example::

    import distillery
    teacher = distillery.train(teacher_net, train_loader, val_loader, epochs=10).model
    result = distillery.distill(teacher, student_net, train_loader, val_loader, temperature=4.0, alpha=0.1)
    print(distillery.evaluate(result.model, test_loader, teacher=teacher))
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from distillery.app.steps.fit import Result, fit_method
from distillery.app.steps.transfer_batches import run_teacher_once
from distillery.errors import ConfigError
from distillery.methods import create_method
from distillery.teachers.frozen import left_as_found


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
            label_smoothing: float | None = None, method_options: dict[str, Any] | None = None, seed: int = 0,
            teacher_once: bool = True, **options: Any) -> Result:
    """Distil ``teacher`` into ``student``: the teacher is frozen and kept in eval mode, only the student trains.

    ``method``: "hinton" (soft targets at ``temperature``, KL·T², plus ``alpha`` · hard-label CE at T=1;
    defaults T=4, alpha=0.5), "logit_mse" (alpha · CE + (1 − alpha) · MSE between logits), "dkd" or
    "dist", or a language model's "token_kd" on :class:`~distillery.data.token_batches.TokenBatches`. Further
    method keywords (``standardize``, ``nckd_weight``, ``divergence``, ...) go in ``method_options``; None (also for
    ``temperature``, ``alpha`` and ``label_smoothing``) means the method's default. Training options as for
    :func:`train`.

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
