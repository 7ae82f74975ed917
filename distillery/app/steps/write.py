"""The write step: a run directory filled as training goes (metrics, last weights) and when it ends (the best
student, its test evaluation, each peer's); see docs/run-directory.md."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from distillery.app.config import RunConfig
from distillery.app.steps.prepared_data import PreparedData
from distillery.app.steps.fit import Result
from distillery.app.steps.resume import discard_state
from distillery.engine import RunDirectory, peer_record
from distillery.engine.distributed import SINGLE_PROCESS, DistributedContext
from distillery.engine.fsdp import full_state
from distillery.models import count_parameters


def run_metadata(config: RunConfig, data: PreparedData, model: nn.Module) -> dict[str, Any]:
    """What model.json records beside the weights: role, architecture, data, preprocessing, the config."""
    return {
        "role": config.role or ("distilled" if config.distill else "scratch"),
        "architecture": config.model,
        "input_shape": list(data.test.input_shape),
        "num_classes": data.test.num_classes,
        "class_names": list(data.test.class_names),
        "preprocessing": data.normalizer.to_dict() if data.normalizer else None,
        "dataset": {"name": config.data.dataset, "path": config.data.path, "classes": config.data.classes,
                    "options": config.data.source_options()},
        "parameters": count_parameters(model),
        "config": config.model_dump(mode="json"),
    }


class RunWriter:
    """Writes one run's directory: :meth:`after_epoch` as training goes, :meth:`finish` once it is over.

    Example::

        writer = RunWriter(run_dir, metadata, peer_architectures)
        result = fit_method(method, batches, val_batches, on_epoch_end=writer.after_epoch)
        writer.finish(result, evaluate(result.model, test_batches), lambda peer: evaluate(peer, test_batches))
    """

    def __init__(self, run_dir: RunDirectory, metadata: dict[str, Any],
                 peer_architectures: dict[str, dict[str, Any]], context: DistributedContext = SINGLE_PROCESS) -> None:
        self.run_dir = run_dir
        self.metadata = metadata
        self.peer_architectures = peer_architectures
        self.context = context

    def after_epoch(self, record: dict[str, Any], trainer) -> None:
        """On rank 0; with sharded models on every process, which all send rank 0 their shards of the weights."""
        state = full_state(trainer.method.student) if self.context.fsdp else None
        if not self.context.is_main:
            return
        self.run_dir.append_metrics(record)
        self.run_dir.save_model("last", trainer.method.student, {**self.metadata, "epoch": record["epoch"]},
                                state=state)
        for name in self.peer_architectures:
            self.run_dir.peer(name).append_metrics(peer_record(record, name))

    def finish(self, result: Result, evaluation: dict[str, Any],
               evaluate_peer: Callable[[nn.Module], dict[str, Any]], state: dict[str, Any] | None = None) -> None:
        """The best student's test ``evaluation`` and checkpoint (its whole ``state`` where its model is sharded;
        and each peer's, evaluated by ``evaluate_peer``); the training state goes."""
        if result.peers:
            evaluation["peers"] = save_peers(self.run_dir, result, self.metadata, self.peer_architectures,
                                             evaluate_peer)
        self.run_dir.write_evaluation({"name": self.run_dir.path.name, "role": self.metadata["role"],
                                       "split": "test", **evaluation})
        self.run_dir.save_model("model", result.model, {**self.metadata, "epoch": result.best_epoch,
                                                        "metrics": result.metrics}, state=state)
        discard_state(self.run_dir)


def save_peers(run_dir: RunDirectory, result: Result, metadata: dict[str, Any], architectures: dict[str, dict[str, Any]],
               evaluate_peer: Callable[[nn.Module], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each peer's best checkpoint and test evaluation in peers/<name>/; returns a summary per peer."""
    summaries = {}
    for name, peer in result.peers.items():
        # The online method's teacher is labelled a teacher, so a report compares the student against it.
        role = "teacher" if name == "teacher" else "peer"
        directory = run_dir.peer(name)
        evaluation = evaluate_peer(peer.model)
        directory.write_evaluation({"name": f"{run_dir.path.name}/{name}", "role": role, "split": "test",
                                    **evaluation})
        directory.save_model("model", peer.model, {
            **metadata, "role": role, "architecture": architectures[name],
            "parameters": count_parameters(peer.model), "epoch": peer.best_epoch, "metrics": peer.metrics})
        summaries[name] = {key: evaluation[key] for key in ("accuracy", "nll", "ece", "parameters")}
    return summaries
