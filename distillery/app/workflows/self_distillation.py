"""Self-distillation on in-memory objects: born-again generations and deep supervision, no outside teacher needed.

Example::

    import distillery
    generations = distillery.born_again(make_net, train_loader, val_loader, generations=2, epochs=10)
    supervised = distillery.deep_supervision(net, train_loader, val_loader, student_layers=["features.0"])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from distillery.app.config.distill import logit_methods
from distillery.app.steps.fit import Result, as_batches, fit_method
from distillery.app.steps.transfer_batches import run_teacher_once
from distillery.data import as_batch
from distillery.engine.trainer import EpochCallback
from distillery.errors import ConfigError, ModelError
from distillery.methods import Method, create_method
from distillery.teachers.frozen import left_as_found

GenerationCallback = Callable[[int, Result], None]


@dataclass
class BornAgainResult:
    """Every generation's Result, generation 0 first; a given teacher is generation 0, with no history."""

    generations: list[Result]

    @property
    def model(self) -> nn.Module:
        """The last generation's model."""
        return self.generations[-1].model


def born_again(model_factory: Callable[[], nn.Module], train_data: Any, val_data: Any = None, *,
               generations: int, teacher: nn.Module | None = None, method: str = "hinton",
               temperature: float | None = None, alpha: float | None = None, label_smoothing: float = 0.0,
               method_options: dict[str, Any] | None = None, seed: int = 0, teacher_once: bool = True,
               on_epoch_end: EpochCallback | None = None, on_generation_end: GenerationCallback | None = None,
               **options: Any) -> BornAgainResult:
    """Born-again networks (Furlanello et al. 2018): each generation of one architecture distils from the last.

    Generation 0 is ``teacher`` when given, else a model from ``model_factory`` trained on the labels.
    Generations 1 to ``generations`` are each a fresh model from ``model_factory`` (seeded
    ``seed + g``) distilled from the generation before with ``method`` (a logit method: hinton,
    logit_mse, dkd, dist) and its options. Every epoch record carries a ``"generation"`` field;
    ``on_generation_end(g, result)`` is told when generation ``g`` is done. Training options as
    for :func:`distillery.train`; they apply to every generation. A generation that has taught the
    next stays frozen and in eval mode, as every teacher is.

    When ``train_data`` is an ArrayDataset or a BatchIterator without augmentation, each generation's
    teacher runs once over it and its logits are looked up by index (``teacher_once=False``: live on
    every batch), as :func:`distillery.distill` does.

    Example::

        make_net = lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        result = distillery.born_again(make_net, train_loader, val_loader, generations=2, epochs=10)
        final = result.model                                    # generation 2
        accuracies = [g.metrics["val/accuracy"] for g in result.generations]
    """
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ConfigError(f"generations must be a whole number >= 1, got {generations!r}")
    with left_as_found(teacher):  # the caller's teacher is frozen only while the generations learn from it
        distiller_options = {"temperature": temperature, "alpha": alpha, **(method_options or {}),
                             "label_smoothing": label_smoothing}
        # A bad method or option fails now, not after generation 0 has trained.
        probe = model_factory()
        build_distiller(method, probe, teacher if teacher is not None else _fresh_model(model_factory, [probe]),
                        distiller_options)

        def train_generation(generation: int, method_object: Method) -> Result:
            return fit_method(method_object, train_data, val_data, seed=seed + generation,
                              description=f"generation {generation} of {generations}:",
                              on_epoch_end=_tagged(generation, on_epoch_end), **options)

        if teacher is None:
            torch.manual_seed(seed)
            scratch = create_method("supervised", model_factory(), label_smoothing=label_smoothing)
            results = [train_generation(0, scratch)]
        else:
            results = [Result(model=teacher)]
        if on_generation_end is not None:
            on_generation_end(0, results[0])
        for generation in range(1, generations + 1):
            torch.manual_seed(seed + generation)
            student = _fresh_model(model_factory, [result.model for result in results])
            distiller = build_distiller(method, student, results[-1].model, distiller_options)
            if teacher_once:
                run_teacher_once(distiller, results[-1].model, train_data, options.get("device", "auto"))
            results.append(train_generation(generation, distiller))
            if on_generation_end is not None:
                on_generation_end(generation, results[-1])
        return BornAgainResult(results)


def build_distiller(method: str, student: nn.Module, teacher: nn.Module, options: dict[str, Any]) -> Method:
    """The method one generation distils with; only methods that learn from a teacher's logits qualify."""
    if method not in logit_methods():
        raise ConfigError(f"born-again generations need a logit method ({', '.join(logit_methods())}), "
                          f"not {method!r}")
    return create_method(method, student, teacher, **options)


def _fresh_model(model_factory: Callable[[], nn.Module], earlier: list[nn.Module]) -> nn.Module:
    model = model_factory()
    taken = {id(parameter) for other in earlier for parameter in other.parameters()}
    if any(id(parameter) in taken for parameter in model.parameters()):
        raise ModelError("model_factory returned a model that shares weights with an earlier generation; "
                         "it must build a new model on every call, e.g. lambda: make_net()")
    return model


def _tagged(generation: int, on_epoch_end: EpochCallback | None) -> EpochCallback:
    def tag(record: dict[str, Any], trainer) -> None:
        record["generation"] = generation
        if on_epoch_end is not None:
            on_epoch_end(record, trainer)
    return tag


def deep_supervision(student: nn.Module, train_data: Any, val_data: Any = None, *, student_layers: Sequence[str],
                     input_shape: Sequence[int] | None = None, temperature: float | None = None,
                     alpha: float | None = None, aux_weight: float | None = None, label_smoothing: float = 0.0,
                     seed: int = 0, **options: Any) -> Result:
    """Train ``student`` with auxiliary heads on ``student_layers`` that learn from its own final head.

    The heads (see :class:`distillery.methods.DeepSupervision`) train with the student and are
    dropped at the end: ``result.model`` is the student alone. ``input_shape`` (one sample's
    shape) defaults to the first training batch's. Training options as for :func:`distillery.train`.

    Example::

        student = distillery.build_model({"name": "cnn", "channels": [16, 32]}, (1, 8, 8), 10)
        result = distillery.deep_supervision(student, train, val, student_layers=["features.0"], epochs=10)
    """
    if input_shape is None:
        first_batch = next(iter(as_batches(train_data, 2, shuffle=False, seed=seed)))
        input_shape = tuple(as_batch(first_batch).inputs.shape[1:])
    torch.manual_seed(seed)
    method = create_method("deep_supervision", student, student_layers=student_layers, input_shape=input_shape,
                           temperature=temperature, alpha=alpha, aux_weight=aux_weight,
                           label_smoothing=label_smoothing)
    return fit_method(method, train_data, val_data, seed=seed, description="deep supervision", **options)
