"""Config-driven runs: data, model and method built from a RunConfig, results written to a run directory."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import torch
from torch import nn

from distillery.api import Result, evaluate, fit_method
from distillery.config import DataConfig, RunConfig, TransferConfig
from distillery.data.memmap import MemmapInputs
from distillery.data import (
    ArrayDataset,
    Augmentation,
    BatchIterator,
    Normalizer,
    filter_classes,
    labeled_mask,
    load_dataset,
    select_classes,
    train_val_split,
)
from distillery.engine import RunDirectory, peer_record
from distillery.engine.distributed import setup_distributed
from distillery.engine.training_state import read_training_state
from distillery.errors import ConfigError, DataError, ModelError, NumericalError
from distillery.methods import (create_method, method_accepts, method_default, method_uses_teacher_features,
                               method_uses_teacher_logits)
from distillery.models import build_model, count_parameters, initialize_from_teacher
from distillery.models.checkpoint import load_model
from distillery.resume import checkpointer_for, discard_state, refuse_born_again, start_or_resume
from distillery.teachers import load_teacher
from distillery.teachers.ensemble import EnsembleTeacher
from distillery.teachers.from_config import LoadedTeacher, combine_teachers, load_teachers
from distillery.teachers.inputs import feed_own_inputs, pipeline_description, teacher_normalizer
from distillery.teacher_outputs import TransferPlan, plan_transfer

# Every run of a comparison must validate and test on the same samples, whatever its own seed.
SPLIT_SEED = 0


@dataclass
class PreparedData:
    train: ArrayDataset          # raw pixels: augmentation works on them, normalisation follows per batch
    val: ArrayDataset | None     # normalised
    test: ArrayDataset           # normalised
    normalizer: Normalizer | None
    augmentation: Augmentation


def _seeded_subset(dataset: ArrayDataset, limit: int | None) -> ArrayDataset:
    if limit is None or limit >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    return dataset.subset(torch.randperm(len(dataset), generator=generator)[:limit])


def _transfer_set(train: ArrayDataset, transfer: TransferConfig) -> ArrayDataset:
    """The training split, or another source's training data, restricted to the chosen classes."""
    if transfer.dataset is not None:
        train = _seeded_subset(load_dataset(transfer.dataset, transfer.path)[0], transfer.limit)
    elif transfer.limit is not None:
        train = _seeded_subset(train, transfer.limit)
    if transfer.classes or transfer.exclude_classes:
        train = filter_classes(train, transfer.classes, transfer.exclude_classes)
    return train


def prepare_data(data: DataConfig, preprocessing: Normalizer | dict[str, Any] | None = None,
                 transfer: TransferConfig | None = None) -> PreparedData:
    """Load, limit, split and normalise; ``preprocessing`` (a teacher's) replaces fitting a new normaliser.

    With ``transfer``, the training set becomes that transfer set; validation and test stay the
    evaluation dataset's, over all its classes.
    """
    train_full, test = load_dataset(data.dataset, data.path)
    train_full = _seeded_subset(train_full, data.train_limit)
    test = _seeded_subset(test, data.test_limit)
    train, val = train_val_split(train_full, data.val_fraction, seed=SPLIT_SEED)
    # Normalised with every class's statistics: models of different class subsets then share their inputs.
    all_classes = train
    if data.classes is not None:
        train, test = select_classes(train, data.classes), select_classes(test, data.classes)
        val = select_classes(val, data.classes) if val is not None else None
    if transfer is not None:
        train = _transfer_set(train, transfer)
        if train.input_shape != test.input_shape:
            raise DataError(f"the transfer set ({train.source}) has inputs of shape {train.input_shape} but the "
                            f"evaluation data has {test.input_shape}; both must feed the same student")
        if transfer.labels and train.class_names != test.class_names:
            raise DataError(f"the transfer set ({train.source}) names its classes differently from the evaluation "
                            "data, so its labels cannot be used; set transfer.labels: false")
    if preprocessing is not None:
        normalizer = preprocessing if isinstance(preprocessing, Normalizer) else Normalizer.from_dict(preprocessing)
    else:
        normalizer = Normalizer.fit(all_classes if data.classes else train) if data.normalize else None
    if normalizer is not None:
        val = normalizer.apply(val) if val is not None else None
        test = normalizer.apply(test)
    augmentation = Augmentation(data.augment.shift, data.augment.crop_padding, data.augment.flip)
    return PreparedData(train, val, test, normalizer, augmentation)


def _check_model_fits(metadata: dict[str, Any], dataset: ArrayDataset, path: str | Path, role: str,
                      classes: bool = True) -> None:
    shape = tuple(dataset.input_shape)
    if tuple(metadata["input_shape"]) != shape:
        raise ModelError(f"{role} {path} takes inputs of shape {tuple(metadata['input_shape'])} "
                         f"but the data has {shape}; use the data the {role} was trained for")
    if classes and int(metadata["num_classes"]) != dataset.num_classes:
        raise ModelError(f"{role} {path} predicts {metadata['num_classes']} classes but the data "
                         f"has {dataset.num_classes}; the {role} and the data must share their classes")


def trusted_factories(config: RunConfig) -> set[str]:
    """The ``package.module:function`` factories the user's own config names: its allow_factories, and
    those its model specs (student, peers, online teacher) use. Checkpoints may name only these."""
    specs = [config.model]
    if config.distill is not None:
        specs += list(config.distill.peers or []) + [config.distill.teacher_model or {}]
    named = {spec.get("name") for spec in specs if ":" in str(spec.get("name", ""))}
    return set(config.allow_factories) | named


def teachers_and_data(config: RunConfig) -> tuple[list[LoadedTeacher], PreparedData, nn.Module | None]:
    """The configured teachers (checked against the data, each fed its own preprocessing), the data in the
    student's preprocessing (the first teacher's when it records one), and the one teacher module a method
    distils from (an ensemble or a label-space merge of several)."""
    distill = config.distill
    teachers = (load_teachers(distill.teacher, allow_factories=trusted_factories(config))
                if distill is not None and distill.teacher else [])
    preprocessing = teachers[0].metadata.get("preprocessing") if teachers else None
    data = prepare_data(config.data, teacher_normalizer(preprocessing, teachers[0].path) if teachers else None,
                        config.transfer)
    for loaded in teachers:
        # A teacher that names its classes may know others than the data's: _teacher_for merges label spaces.
        _check_model_fits(loaded.metadata, data.test, loaded.path, "teacher",
                          classes="class_names" not in loaded.metadata)
        feed_own_inputs(loaded.model, data.normalizer, loaded.metadata.get("preprocessing"),
                        input_shape=data.test.input_shape, source=loaded.path)
    teacher = _teacher_for(config, teachers, data.test.class_names) if teachers else None
    return teachers, data, teacher


def run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Train (``config.distill`` absent) or distil a model as configured; returns the run directory.

    The full training state is saved in ``<output_dir>/state/`` after every epoch (and every
    ``train.checkpoint_every_steps`` steps); ``resume=True`` continues an unfinished run from it, with the
    config from :func:`distillery.resume.resume_config`, and ends with the weights an uninterrupted run would have.

    Example::

        run_dir = run(load_config("configs/digits_distill.yaml"))
        run_dir = run(resume_config("runs/distilled"), resume=True)   # after an interruption
    """
    if resume:
        refuse_born_again(config, config.output_dir)
    if config.distill is not None and config.distill.generations is not None:
        from distillery.generations import run_born_again  # imported here: it builds on this module
        return run_born_again(config, overwrite=overwrite)
    run_dir = RunDirectory(config.output_dir, overwrite=overwrite)
    context = setup_distributed(config.device)  # under torchrun: one process of many, only rank 0 writes
    context.check_global_batch(config.train.batch_size)
    saved = read_training_state(run_dir.path) if resume else None  # refused before any work if there is none
    teachers, data, teacher = teachers_and_data(config)
    torch.manual_seed(config.seed)
    # The evaluation data's classes, not the transfer set's: a student distilled without some class still predicts it.
    model = build_model(config.model, data.test.input_shape, data.test.num_classes)
    metadata = _metadata(config, data, model)
    if teachers:
        if config.distill.init_from_teacher:
            report = initialize_from_teacher(model, teachers[0].model, config.distill.init_layer_map)
            metadata["initialized_from_teacher"] = report.summary()
    method = _method_for(config, model, teacher, data.test.input_shape, data.test.num_classes)
    peer_architectures = _peer_architectures(config, method)
    plan = context.main_first(lambda: _transfer_plan(config, data, teachers, teacher))  # rank 0 writes the cache first
    plan.apply_to(method)
    start_or_resume(run_dir, config, method, saved, list(peer_architectures), context)
    talk = config.progress and context.is_main
    if plan.note and talk:
        print(plan.note, file=sys.stderr)
    if "initialized_from_teacher" in metadata and talk:
        print(f"student initialised: {metadata['initialized_from_teacher']}", file=sys.stderr)

    def after_epoch(record: dict[str, Any], trainer) -> None:
        run_dir.append_metrics(record)
        run_dir.save_model("last", trainer.method.student, {**metadata, "epoch": record["epoch"]})
        for name in peer_architectures:
            run_dir.peer(name).append_metrics(peer_record(record, name))

    val_batches = BatchIterator(data.val, 512) if data.val is not None else None
    train = config.train
    try:
        result = fit_method(method, plan.batches, val_batches, epochs=train.epochs, lr=train.lr,
                            optimizer=train.optimizer, weight_decay=train.weight_decay, momentum=train.momentum,
                            schedule=train.schedule, seed=config.seed, device=config.device,
                            progress=config.progress, precision=train.precision, compile=train.compile,
                            grad_clip=train.grad_clip, on_epoch_end=after_epoch if context.is_main else None,
                            description=metadata["role"], resume=saved,
                            checkpointer=checkpointer_for(config, run_dir, saved, context))
    except NumericalError as error:
        last = run_dir.path / "last.safetensors"
        kept = f"; the last finished epoch is in {last}" if last.is_file() else "; no epoch had finished"
        raise NumericalError(f"{error}{kept}") from None
    if context.is_main:
        evaluation = evaluate(result.model, BatchIterator(data.test, 512), teacher=teacher,
                              latency=config.measure_latency)
        if result.peers:
            evaluation["peers"] = _save_peers(run_dir, result, metadata, peer_architectures, data.test,
                                              config.measure_latency)
        run_dir.write_evaluation({"name": run_dir.path.name, "role": metadata["role"], "split": "test", **evaluation})
        run_dir.save_model("model", result.model, {**metadata, "epoch": result.best_epoch, "metrics": result.metrics})
        discard_state(run_dir)
    context.barrier()  # every process returns once the run directory is complete
    return run_dir.path


def _transfer_plan(config: RunConfig, data: PreparedData, teachers: list[LoadedTeacher], teacher: nn.Module | None,
                   rebuild: bool = False) -> TransferPlan:
    distill = config.distill
    uses_features = distill is not None and method_uses_teacher_features(distill.method)
    uses_table = distill is not None and (method_uses_teacher_logits(distill.method) or uses_features)
    if uses_table and teacher is not None and distill.teacher_cache != "off" and isinstance(data.train.inputs, MemmapInputs):
        raise ConfigError(f"the teacher-output cache fingerprints the whole transfer set in memory, but "
                          f"{data.train.source} is memory-mapped; set distill.teacher_cache: off")
    if distill is not None and distill.teacher_views and not uses_table:
        raise ConfigError(f"teacher_views caches the teacher's outputs, which method {distill.method!r} does not "
                          "read from a cache; remove teacher_views")
    return plan_transfer(data.train, teacher, augmentation=data.augmentation, transform=data.normalizer,
                         batch_size=config.train.batch_size, seed=config.seed,
                         label_options=_label_options(config.transfer, len(data.train)), teacher_table=uses_table,
                         cache=distill.teacher_cache if distill else "off",
                         views=distill.teacher_views if distill else None,
                         preprocessing=pipeline_description(
                             data.normalizer, [loaded.metadata.get("preprocessing") for loaded in teachers]),
                         rebuild=rebuild,
                         teacher_layers=_teacher_feature_paths(config, teacher) if uses_features else (),
                         feature_budget_mb=distill.feature_cache_mb if distill else 0.0)


def _teacher_feature_paths(config: RunConfig, teacher: nn.Module | None) -> list[str]:
    """The teacher module paths a feature method reads, inside the hint teacher of an ensemble."""
    options = {key: getattr(config.distill, key) for key in FEATURE_PATHS if getattr(config.distill, key) is not None}
    if not options:
        raise ConfigError(f"method {config.distill.method!r} needs the teacher's feature layers; set "
                          "distill.teacher_layer (fitnet) or distill.teacher_layers (attention), e.g. features.1")
    _paths_in_hint_teacher(config, options, teacher)
    paths = options.get("teacher_layers") or [options["teacher_layer"]]
    return list(dict.fromkeys(paths))  # a layer paired with two student layers is cached once


def _label_options(transfer: TransferConfig | None, size: int) -> dict[str, Any]:
    """All labels, none (soft targets only), or a seeded share of them."""
    if transfer is None:
        return {}
    if transfer.labeled_fraction is not None and transfer.labeled_fraction < 1.0:
        return {"labeled": labeled_mask(size, transfer.labeled_fraction, seed=SPLIT_SEED)}
    return {"with_labels": transfer.labels}


def _teacher_for(config: RunConfig, teachers: list[LoadedTeacher], classes: list[str]) -> nn.Module:
    # Probabilities are averaged at the temperature the method softens with, as Hinton et al. average them.
    temperature = config.distill.temperature or method_default(config.distill.method, "temperature", 1.0)
    return combine_teachers(teachers, classes=classes, weights=config.distill.teacher_weights,
                            combine=config.distill.ensemble, temperature=temperature)


TEACHER_SETTINGS = {"teacher", "teacher_weights", "ensemble", "init_from_teacher", "init_layer_map", "method",
                    "hint_teacher", "teacher_cache", "teacher_views", "feature_cache_mb"}
FEATURE_PATHS = ("teacher_layer", "teacher_layers")


def _paths_in_hint_teacher(config: RunConfig, options: dict[str, Any], teacher: nn.Module | None) -> None:
    """Point teacher layer paths into the ensemble member that gives the features (the first by default)."""
    chosen = config.distill.hint_teacher
    if chosen is not None and not any(method_accepts(config.distill.method, key) for key in FEATURE_PATHS):
        raise ConfigError(f"hint_teacher chooses the teacher of feature hints; method {config.distill.method!r} "
                          "uses none (use fitnet or attention, or remove hint_teacher)")
    if not isinstance(teacher, EnsembleTeacher):
        if chosen:
            raise ConfigError(f"hint_teacher is {chosen} but there is one teacher; remove it or list more teachers")
        return
    chosen = chosen or 0
    if chosen >= len(teacher.members):
        raise ConfigError(f"hint_teacher is {chosen} but there are {len(teacher.members)} teachers (counted from 0)")
    for key in FEATURE_PATHS:
        if key in options:
            paths = options[key]
            options[key] = ([f"members.{chosen}.{path}" for path in paths] if isinstance(paths, list)
                            else f"members.{chosen}.{paths}")


def _method_for(config: RunConfig, model: nn.Module, teacher: nn.Module | None, input_shape: tuple[int, ...],
                num_classes: int):
    if config.distill is None:
        return create_method("supervised", model, label_smoothing=config.train.label_smoothing)
    options = config.distill.model_dump(exclude=TEACHER_SETTINGS, exclude_none=True)
    if config.transfer is not None and not config.transfer.labels and method_accepts(config.distill.method, "alpha"):
        options["alpha"] = 0.0  # no labels, no hard-label term: the soft term weighs 1 - alpha = 1
    _paths_in_hint_teacher(config, options, teacher)
    # Models trained beside the student each start from a seed of their own, so no two begin alike.
    if "peers" in options:
        options["peers"] = [_fresh_model(spec, f"peers[{index}]", config.seed + 1 + index, input_shape, num_classes)
                            for index, spec in enumerate(options["peers"])]
    if "teacher_model" in options:
        options["teacher_model"] = _fresh_model(options["teacher_model"], "teacher_model", config.seed + 1,
                                                input_shape, num_classes)
    if method_accepts(config.distill.method, "input_shape"):
        options["input_shape"] = input_shape  # feature methods size their adapters with one dummy forward
    return create_method(config.distill.method, model, teacher, label_smoothing=config.train.label_smoothing,
                         **options)


def _fresh_model(spec: dict[str, Any], setting: str, seed: int, input_shape: tuple[int, ...],
                 num_classes: int) -> nn.Module:
    torch.manual_seed(seed)
    try:
        return build_model(spec, input_shape, num_classes)
    except ModelError as error:
        raise ModelError(f"distill.{setting}: {error}") from None


def _peer_architectures(config: RunConfig, method) -> dict[str, dict[str, Any]]:
    """Each peer's model spec by the name the method gives it; a method keeps its peers in the configured order."""
    names = list(method.peer_models())
    if not names:
        return {}
    return dict(zip(names, config.distill.peers or [config.distill.teacher_model], strict=True))


def _save_peers(run_dir: RunDirectory, result: Result, metadata: dict[str, Any], architectures: dict[str, dict[str, Any]],
                test: ArrayDataset, latency: bool) -> dict[str, dict[str, Any]]:
    """Each peer's best checkpoint and test evaluation in peers/<name>/; returns a summary per peer."""
    summaries = {}
    for name, peer in result.peers.items():
        # The online method's teacher is labelled a teacher, so a report compares the student against it.
        role = "teacher" if name == "teacher" else "peer"
        directory = run_dir.peer(name)
        evaluation = evaluate(peer.model, BatchIterator(test, 512), latency=latency)
        directory.write_evaluation({"name": f"{run_dir.path.name}/{name}", "role": role, "split": "test",
                                    **evaluation})
        directory.save_model("model", peer.model, {
            **metadata, "role": role, "architecture": architectures[name],
            "parameters": count_parameters(peer.model), "epoch": peer.best_epoch, "metrics": peer.metrics})
        summaries[name] = {key: evaluation[key] for key in ("accuracy", "nll", "ece", "parameters")}
    return summaries


def _metadata(config: RunConfig, data: PreparedData, model: nn.Module) -> dict[str, Any]:
    return {
        "role": config.role or ("distilled" if config.distill else "scratch"),
        "architecture": config.model,
        "input_shape": list(data.test.input_shape),
        "num_classes": data.test.num_classes,
        "class_names": list(data.test.class_names),
        "preprocessing": data.normalizer.to_dict() if data.normalizer else None,
        "dataset": {"name": config.data.dataset, "path": config.data.path, "classes": config.data.classes},
        "parameters": count_parameters(model),
        "config": config.model_dump(mode="json"),
    }


def build_teacher_cache(config: RunConfig, *, rebuild: bool = False) -> str:
    """Compute the teacher's outputs on the config's transfer set ahead of the run and cache them.

    Example::

        print(build_teacher_cache(load_config("configs/fashion_mnist_distill.yaml")))
    """
    distill = config.distill
    if distill is None or not distill.teacher:
        raise ConfigError("a teacher cache needs a distill: section that names a teacher")
    if distill.teacher_cache == "off":
        raise ConfigError("distill.teacher_cache is off; set it to auto or a file path to build a cache")
    if config.data.augment.enabled and not distill.teacher_views:
        raise ConfigError("data.augment draws new images every epoch, so the teacher runs live; set "
                          "distill.teacher_views: K to cache K fixed augmented views")
    teachers, data, teacher = teachers_and_data(config)
    plan = _transfer_plan(config, data, teachers, teacher, rebuild=rebuild)
    if method_uses_teacher_features(distill.method) and plan.teacher_features is None:
        raise ConfigError(f"{plan.note} (e.g. --set distill.feature_cache_mb=N)")
    return plan.note


def checkpoint_data(path: str | Path, metadata: dict[str, Any], *, dataset: str | None = None,
                    data_path: str | None = None, test_limit: int | None = None) -> PreparedData:
    """A checkpoint's recorded dataset (or ``dataset``) in its recorded preprocessing, checked to fit the model.

    There is no validation split: ``train`` is the whole training split (raw), ``test`` is normalised.

    Example::

        model, metadata = load_model("runs/distilled")
        test = checkpoint_data("runs/distilled", metadata).test
    """
    recorded = metadata.get("dataset") or {}
    data_config = DataConfig(dataset=dataset or recorded.get("name", "digits"),
                             path=data_path if dataset or data_path else recorded.get("path"),
                             test_limit=test_limit, val_fraction=0.0, normalize=False,
                             classes=recorded.get("classes") if dataset is None else None)
    data = prepare_data(data_config, teacher_normalizer(metadata.get("preprocessing"), str(path)))
    _check_model_fits(metadata, data.test, path, "model")
    return data


def evaluate_checkpoint(path: str | Path, *, teacher: str | Path | None = None, dataset: str | None = None,
                        data_path: str | None = None, test_limit: int | None = None,
                        latency: bool = True, allow_factories: Collection[str] = ()) -> dict[str, Any]:
    """Evaluate a checkpoint on the test split of its own dataset (or ``dataset``), with its own preprocessing;
    a ``teacher`` is fed its own. ``allow_factories``: user factories the checkpoints may name.

    Example::

        metrics = evaluate_checkpoint("runs/distilled", teacher="runs/teacher")
    """
    model, metadata = load_model(path, allow_factories=allow_factories)
    data = checkpoint_data(path, metadata, dataset=dataset, data_path=data_path, test_limit=test_limit)
    teacher_model = None
    if teacher is not None:
        teacher_model, teacher_metadata = load_teacher(teacher, allow_factories=allow_factories)
        _check_model_fits(teacher_metadata, data.test, teacher, "teacher")
        feed_own_inputs(teacher_model, data.normalizer, teacher_metadata.get("preprocessing"),
                        input_shape=data.test.input_shape, source=str(teacher))
    result = evaluate(model, BatchIterator(data.test, 512), teacher=teacher_model, latency=latency)
    return {"name": Path(path).name, "role": metadata.get("role"), "split": "test", **result}
