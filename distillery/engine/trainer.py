"""The training loop. It knows nothing about any method: it asks for a StepOutput and minimises its loss."""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distillery.data.batch import as_batch, counted_positions, model_logits
from distillery.engine.device import autocast
from distillery.engine.distributed import SINGLE_PROCESS, DistributedContext
from distillery.engine.progress import EpochProgress, FitResult, PeerBest, peer_record
from distillery.engine.state_codec import changing_state
from distillery.errors import DataError, NumericalError

if TYPE_CHECKING:
    from distillery.engine.checkpointer import Checkpointer
    from distillery.engine.training_state import SavedState
    from distillery.methods.base import Method, StepOutput

EpochCallback = Callable[[dict[str, Any], "Trainer"], None]


@dataclass(frozen=True)
class BestEpoch:
    """Which validation metric chooses the best epoch, and in which direction (a task says: accuracy for
    classifiers, perplexity, the lower the better, for language models). Without validation data the last epoch
    is the best; peers are always chosen by their own validation accuracy."""

    metric: str = "val/accuracy"
    higher_is_better: bool = True

    def score(self, record: dict[str, Any]) -> float:
        if self.metric not in record:
            return float(record["epoch"])
        return record[self.metric] if self.higher_is_better else -record[self.metric]


class Trainer:
    """Runs epochs of ``method.step`` with one optimiser and a per-step schedule.

    Example::

        trainer = Trainer(method, optimizer, scheduler, epochs=10)
        result = trainer.fit(train_batches, val_batches)
    """

    def __init__(self, method: "Method", optimizer: torch.optim.Optimizer, scheduler=None, *, epochs: int,
                 device: torch.device | str = "cpu", progress: bool = True, description: str = "train",
                 precision: str = "fp32", grad_clip: float | None = None,
                 distributed: DistributedContext = SINGLE_PROCESS, best: BestEpoch = BestEpoch()) -> None:
        self.method = method.to(device)
        self.distributed = distributed
        self._forward = distributed.wrap(self.method, torch.device(device))  # method.step, or its DDP module
        self.precision = precision
        self.grad_clip = grad_clip
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.epochs = epochs
        self.device = torch.device(device)
        self.progress = progress
        self.description = description
        self.global_step = 0  # optimiser steps taken, over all epochs
        self.best = best

    def fit(self, train_batches: Iterable, val_batches: Iterable | None = None,
            on_epoch_end: EpochCallback | None = None, *, checkpointer: "Checkpointer | None" = None,
            resume: "SavedState | None" = None) -> FitResult:
        """Train for the remaining epochs; ``checkpointer`` saves the training state as it goes (and stops
        cleanly on SIGINT/SIGTERM), ``resume`` continues from a saved state at the batch where it stopped."""
        result, start_epoch, resumed = FitResult(), 1, None
        if resume is not None:
            result, start_epoch, resumed = resume.restore(self)
        watching = checkpointer.watch(self, result, train_batches) if checkpointer else contextlib.nullcontext()
        with watching:
            for epoch in range(start_epoch, self.epochs + 1):
                if hasattr(train_batches, "set_epoch"):
                    train_batches.set_epoch(epoch)
                self.method.set_epoch(epoch)
                progress = resumed if resumed is not None and epoch == start_epoch else None
                progress = progress or EpochProgress(lr=self.optimizer.param_groups[0]["lr"])
                started = time.perf_counter()
                record: dict[str, Any] = {"epoch": epoch, "lr": progress.lr}
                record.update(self.train_epoch(train_batches, epoch, progress, checkpointer))
                record["epoch_time_s"] = time.perf_counter() - started
                if val_batches is not None:
                    record.update(self._validate_all(val_batches))
                result.history.append(record)
                self._keep_if_best(result, record)
                if self.progress:
                    tqdm.write(self._summary(record), file=sys.stderr)
                if on_epoch_end is not None:
                    on_epoch_end(record, self)
                if checkpointer is not None:
                    checkpointer.after_epoch(epoch, progress)
        return result

    def train_epoch(self, batches: Iterable, epoch: int, progress: EpochProgress | None = None,
                    checkpointer: "Checkpointer | None" = None) -> dict[str, float]:
        """One epoch's steps; with ``progress`` from a saved state, its first ``progress.step`` batches are
        skipped (the batches' order is fixed per epoch, so they are the ones already trained on)."""
        self.method.train()
        progress = progress or EpochProgress(lr=self.optimizer.param_groups[0]["lr"])
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = tqdm(itertools.islice(batches, progress.step, None), desc=f"{self.description} {epoch}/{self.epochs}",
                   disable=not self.progress, leave=False, file=sys.stderr, dynamic_ncols=True,
                   initial=progress.step, total=total)
        tokens, started = 0, time.perf_counter()
        for batch in bar:
            output, batch_size, positions = self._step(batch, batches, epoch, progress.step + 1)
            progress.add(output, batch_size)
            self.global_step += 1
            tokens += positions
            if self.progress:
                speed = {"tok/s": f"{tokens / (time.perf_counter() - started):.0f}"} if tokens else {}
                bar.set_postfix(loss=f"{output.loss.item():.4f}", **speed, refresh=False)
            if checkpointer is not None:
                checkpointer.after_step(epoch, progress)
        sums = self.distributed.sum_over_ranks(
            {**{f"train/{name}": total for name, total in progress.totals.items()}, "samples": progress.seen},
            self.device)
        seen = sums.pop("samples")
        if seen == 0:
            raise DataError("the training data yielded no batches")
        record = {name: total / seen for name, total in sums.items()}
        if tokens:  # sequence batches: how many counted tokens this process trained on per second
            record["train/tokens_per_s"] = tokens / (time.perf_counter() - started)
        return record

    def _step(self, batch: Any, batches: Iterable, epoch: int, step: int) -> tuple["StepOutput", int, int]:
        """One optimiser step; returns the step's output, its batch size (under torchrun, its weighted share) and
        the positions it counted (0 for batches of one prediction per sample)."""
        batch = as_batch(batch).to(self.device, non_blocking=True)
        positions = int(batch.mask.sum()) if batch.mask is not None and batch.mask.dim() > 1 else 0
        with autocast(self.device, self.precision):
            output = self._forward(batch)
        check_finite(output, epoch, step)  # one host sync per step: the price of stopping before the update
        self.optimizer.zero_grad(set_to_none=True)
        loss, batch_size = self.distributed.weighted(output.loss, batches, batch.size)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return output, batch_size, positions

    def _validate_all(self, val_batches: Iterable) -> dict[str, float]:
        metrics = validate(self.method.student, val_batches, self.device, self.distributed)
        for name, peer in self.method.peer_models().items():
            peer_metrics = validate(peer, val_batches, self.device, self.distributed)
            metrics.update({key.replace("val/", f"val/{name}/", 1): value for key, value in peer_metrics.items()})
        return metrics

    def _summary(self, record: dict[str, Any]) -> str:
        parts = [f"{self.description} epoch {record['epoch']}/{self.epochs}", f"loss {record['train/loss']:.4f}"]
        if "val/perplexity" in record:
            parts.append(f"val perplexity {record['val/perplexity']:.2f}")
        elif "val/accuracy" in record:
            parts.append(f"val accuracy {record['val/accuracy']:.2%}")
            parts += [f"{name} {record[f'val/{name}/accuracy']:.2%}" for name in self.method.peer_models()]
        parts.append(f"{record['epoch_time_s']:.1f} s")
        return " | ".join(parts)

    def _keep_if_best(self, result: FitResult, record: dict[str, Any]) -> None:
        score = self.best.score(record)
        if score >= result.best_score:
            result.best_score = score
            result.best_epoch = record["epoch"]
            result.best_state = copy.deepcopy(changing_state(self.method.student))
            result.best_metrics = {k: v for k, v in record.items() if k.startswith("val/") and k.count("/") == 1}
        for name, peer in self.method.peer_models().items():
            view = peer_record(record, name)
            best = result.peers.setdefault(name, PeerBest())
            score = view.get("val/accuracy", float(record["epoch"]))
            if score >= best.score:
                best.score, best.epoch = score, record["epoch"]
                best.state = copy.deepcopy(changing_state(peer))
                best.metrics = {k: v for k, v in view.items() if k.startswith("val/")}


def check_finite(output: "StepOutput", epoch: int, step: int) -> None:
    """Stop at the first NaN or infinite loss, before it reaches the weights, naming where it came from.

    The likely cause is told apart by what is still finite: the teacher's outputs (a broken teacher,
    which no training setting mends), the student's outputs (training diverged: the learning rate or
    the gradients' size), or only some loss part computed from finite outputs (that loss's settings).
    """
    if bool(torch.isfinite(output.loss.detach())):
        return
    bad = [name for name, value in output.logs.items() if not bool(torch.isfinite(value).all())]
    parts = ", ".join(f"{name} {float(output.logs[name]):g}" for name in bad) or "no logged part (the total)"
    where = f"the loss became {float(output.loss.detach()):g} at epoch {epoch}, step {step} (non-finite: {parts})"
    teacher = output.teacher_logits
    if teacher is not None and not bool(torch.isfinite(teacher).all()):
        cause = ("the teacher's outputs are not finite, so its weights or inputs are broken; check the teacher with "
                 "`distillery evaluate TEACHER`")
    elif output.logits is None:
        cause = ("the student's logits were projected a chunk at a time and never held whole, so whether they or a "
                 "loss setting failed is not known: lower train.lr or set train.grad_clip (e.g. 1.0), and check the "
                 "loss's settings (temperature, weights)")
    elif not bool(torch.isfinite(output.logits.detach()).all()):
        cause = ("the student's outputs are not finite: training diverged; lower train.lr, or set train.grad_clip "
                 "(e.g. 1.0)")
    else:
        cause = (f"the student's and teacher's outputs are finite, so the loss part{'s' if len(bad) > 1 else ''} "
                 f"{', '.join(bad) or 'combining them'} failed on them: check that loss's settings "
                 "(temperature, weights)")
    raise NumericalError(f"{where}; {cause}; the weights before this step are untouched")


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable, device: torch.device,
             distributed: DistributedContext = SINGLE_PROCESS) -> dict[str, float]:
    """Accuracy and cross-entropy on labelled batches, with the model in eval mode; summed over processes.

    Sequence batches count every position their mask keeps and that has a label (>= 0), and add the
    perplexity, exp of the mean cross-entropy per token.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, seen, sequences = 0, 0.0, 0, False
    for batch in map(as_batch, batches):
        sequences = sequences or batch.labels is not None and batch.labels.dim() > 1
        if batch.labels is None:
            raise DataError("validation data needs labels")
        batch = batch.to(device)
        logits, labels = counted_positions(batch.mask, model_logits(model, batch.inputs), batch.labels)
        logits, labels = logits[labels >= 0], labels[labels >= 0]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        seen += labels.shape[0]
    model.train(was_training)
    sums = distributed.sum_over_ranks({"correct": correct, "loss": loss_sum, "seen": seen}, device)
    if sums["seen"] == 0:
        raise DataError("the validation data yielded no batches")
    # The count, so a difference of two validation accuracies can be told from noise (distillery.eval.noise).
    metrics = {"val/accuracy": sums["correct"] / sums["seen"], "val/loss": sums["loss"] / sums["seen"],
               "val/samples": int(sums["seen"])}
    if sequences:  # next-token prediction: the cross-entropy per token as a perplexity
        metrics["val/perplexity"] = math.exp(metrics["val/loss"])
    return metrics
