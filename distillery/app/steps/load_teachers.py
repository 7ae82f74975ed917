"""Build step 2, the teachers: load the configured teachers, check them against the data, feed each its own
inputs, and combine several into the one teacher a method distils from."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from distillery.app.config import RunConfig
from distillery.app.config.sections import TeacherSpec
from distillery.app.steps.prepared_data import SPLIT_SEED, PreparedData, check_model_fits, prepare_data
from distillery.app.steps.teacher_specs import load_from_spec, report_teacher_accuracy
from distillery.errors import ConfigError
from distillery.messages import logger, note
from distillery.methods import MethodOptions
from distillery.teachers.ensemble import EnsembleTeacher
from distillery.teachers.from_config import LoadedTeacher, combine_teachers, load_teachers
from distillery.teachers.inputs import feed_own_inputs, teacher_normalizer
from distillery.teachers.label_space import LabelSpaceMerge
from distillery.teachers.layout import prefer_channels_last
from distillery.teachers.outputs_table import OutputsTable

def trusted_factories(config: RunConfig) -> set[str]:
    """The ``package.module:function`` factories the user's own config names: its allow_factories, and
    those its model specs (student, peers, online teacher) use. Checkpoints may name only these."""
    specs = [config.model]
    if config.distill is not None:
        specs += config.distill.options.peer_specs()
        specs += [{"name": entry.factory} for entry in teacher_entries(config.distill.teacher)
                  if isinstance(entry, TeacherSpec) and entry.factory is not None]
    named = {spec.get("name") for spec in specs if ":" in str(spec.get("name", ""))}
    return set(config.allow_factories) | named


def teacher_entries(teacher: Any) -> list[str | TeacherSpec]:
    """The configured teachers as a list: run directories (or checkpoints) and specs of teachers from elsewhere."""
    if teacher is None:
        return []
    return list(teacher) if isinstance(teacher, list) else [teacher]


def teachers_and_data(config: RunConfig) -> tuple[list[LoadedTeacher], PreparedData, nn.Module | None]:
    """The configured teachers (checked against the data, each fed its own preprocessing), the data in the
    student's preprocessing (the first teacher's when it records one), and the one teacher module a method
    distils from (an ensemble or a label-space merge of several)."""
    entries = teacher_entries(config.distill.teacher if config.distill is not None else None)
    # Run directories first: the first teacher's recorded preprocessing becomes the student's.
    runs = {index: load_teachers(entry, allow_factories=trusted_factories(config))[0]
            for index, entry in enumerate(entries) if isinstance(entry, str)}
    first = entries[0] if entries else None
    if isinstance(first, TeacherSpec):
        own = teacher_normalizer(first.preprocessing, first.name) if first.outputs is None else None
    else:
        own = teacher_normalizer(runs[0].metadata.get("preprocessing"), runs[0].path) if runs else None
    data = prepare_data(config.data, own, config.transfer,
                        preprocessing_of=f"teacher {first.name if isinstance(first, TeacherSpec) else first}")
    teachers = [runs[index] if index in runs else load_from_spec(entry, data) for index, entry in enumerate(entries)]
    for loaded in teachers:
        if isinstance(loaded.model, OutputsTable):
            continue  # no inputs to feed: its outputs were computed on the transfer set already
        # A teacher that names its classes may know others than the data's: teacher_for merges label spaces.
        check_model_fits(loaded.metadata, data.test, loaded.path, "teacher",
                          classes="class_names" not in loaded.metadata)
        feed_own_inputs(loaded.model, data.normalizer, loaded.metadata.get("preprocessing"),
                        input_shape=data.test.input_shape, source=loaded.path)
        prefer_channels_last(loaded.model, data.test.inputs[:2])
    for entry, loaded in zip(entries, teachers):
        if isinstance(entry, TeacherSpec) and entry.check and entry.outputs is None and logger.isEnabledFor(logging.INFO):
            report_teacher_accuracy(loaded, data)
    teacher = teacher_for(config, teachers, data.test.class_names) if teachers else None
    if config.distill is not None and config.distill.calibrate_merge:
        calibrate_merge(teacher, data, config.distill.calibrate_merge)
    return teachers, data, teacher


def calibrate_merge(teacher: nn.Module | None, data: PreparedData, per_class: int) -> None:
    """Fit the gate of a merge of teachers of different class sets on ``per_class`` labelled training samples
    of every class (a seeded choice), fed as the student's batches are."""
    if not isinstance(teacher, LabelSpaceMerge):
        raise ConfigError("distill.calibrate_merge calibrates teachers of different class sets; these teachers "
                          "predict the data's classes: remove calibrate_merge")
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(data.train), generator=generator)
    labels = data.train.labels[order]
    chosen = torch.cat([order[labels == label][:per_class] for label in range(data.train.num_classes)])
    inputs = data.train.inputs[chosen]
    inputs = data.normalizer(inputs) if data.normalizer is not None else inputs
    nll = teacher.calibrate(inputs, data.train.labels[chosen])
    note(f"label-space merge calibrated on {len(chosen)} labelled samples (up to {per_class} per class; "
         f"gate NLL {nll:.3f})")


def teacher_for(config: RunConfig, teachers: list[LoadedTeacher], classes: list[str]) -> nn.Module:
    # Probabilities are averaged at the temperature the method softens with, as Hinton et al. average them.
    temperature = getattr(config.distill.options, "temperature", 1.0)
    return combine_teachers(teachers, classes=classes, weights=config.distill.teacher_weights,
                            combine=config.distill.ensemble, temperature=temperature)


def teacher_feature_paths(config: RunConfig, teacher: nn.Module | None) -> list[str]:
    """The teacher module paths a feature method reads, inside the hint teacher of an ensemble."""
    paths = options_in_hint_teacher(config, teacher).teacher_layers_read()
    return list(dict.fromkeys(paths))  # a layer paired with two student layers is cached once


def options_in_hint_teacher(config: RunConfig, teacher: nn.Module | None) -> MethodOptions:
    """The method's options, with teacher layer paths pointed into the ensemble member that gives the features (the
    first by default)."""
    chosen, options = config.distill.hint_teacher, config.distill.options
    if chosen is not None and not config.distill.needs.teacher_features:
        raise ConfigError(f"hint_teacher chooses the teacher of feature hints; method {config.distill.method!r} "
                          "uses none (use fitnet or attention, or remove hint_teacher)")
    if not isinstance(teacher, EnsembleTeacher):
        if chosen:
            raise ConfigError(f"hint_teacher is {chosen} but there is one teacher; remove it or list more teachers")
        return options
    chosen = chosen or 0
    if chosen >= len(teacher.members):
        raise ConfigError(f"hint_teacher is {chosen} but there are {len(teacher.members)} teachers (counted from 0)")
    return options.in_ensemble_member(chosen)
