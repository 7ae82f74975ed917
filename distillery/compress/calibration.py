"""Calibration inputs for static int8 quantization, checked to be on the scale of the model's own inputs.

Static quantization fixes each activation's int8 range from the calibration inputs. Inputs in another
preprocessing than the model's (pixels in 0..255 for a model trained on 0..1) give ranges that clip
everything the model really sees, and the int8 model silently collapses; so their scale is compared
with the model's own test inputs, both in the preprocessing its model.json records, before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distillery.app.steps.prepared_data import SPLIT_SEED
from distillery.compress.source import CheckpointSource
from distillery.data import load_dataset
from distillery.errors import ConfigError, DataError

DEFAULT_CALIBRATION_SAMPLES = 512
# How far the calibration inputs' spread (std) may differ from the model's own inputs', as a factor either way,
# and how far their mean may sit from the model's, in the model's standard deviations: beyond the first values
# a warning, beyond the second a refusal. Data on another scale is off by 255x; another dataset in the same
# preprocessing (Fashion-MNIST for an MNIST model) by under 1.5x and 1 std.
WARN_SPREAD_FACTOR, REFUSE_SPREAD_FACTOR = 2.0, 10.0
WARN_SHIFT, REFUSE_SHIFT = 2.0, 10.0
_REFERENCE_SAMPLES = 2048


@dataclass
class CalibrationData:
    """Calibration inputs [N, *input_shape] in the model's preprocessing, and a one-line ``warning`` when their
    scale is somewhat off from the model's own inputs (None when it is not)."""

    inputs: torch.Tensor
    warning: str | None = None


def calibration_inputs(source: CheckpointSource, samples: int = DEFAULT_CALIBRATION_SAMPLES,
                       dataset: str | None = None, data_path: str | None = None) -> CalibrationData:
    """``samples`` training inputs (a seeded choice), preprocessed as the checkpoint records, range-checked.

    They come from the checkpoint's own training split, or from the training split of ``dataset``
    (any dataset name, with ``data_path``), which must have the model's input shape. Raises ConfigError
    for a bad count, DataError for another shape or a scale clearly off (see :func:`check_calibration_range`).

    Example::

        calibration = calibration_inputs(source, 256, dataset="npz", data_path="unlabeled.npz")
        print(calibration.inputs.shape, calibration.warning)
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"calibration samples must be an integer >= 1, got {samples!r}")
    if dataset is None and data_path is not None:
        raise ConfigError(f"a calibration path ({data_path}) needs a calibration dataset naming its format, e.g. npz")
    train = load_dataset(dataset, data_path)[0] if dataset is not None else source.data.train
    if train.input_shape != source.input_shape:
        raise DataError(f"calibration data {train.source or dataset} has inputs of shape {train.input_shape} but "
                        f"the model {source.stem} takes {source.input_shape}; calibrate on data shaped like its own")
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    chosen = train.inputs[torch.randperm(len(train), generator=generator)[:samples]]
    normalizer = source.data.normalizer
    inputs = normalizer(chosen) if normalizer is not None else chosen
    return CalibrationData(inputs, check_calibration_range(source, inputs, train.source or str(dataset)))


def check_calibration_range(source: CheckpointSource, inputs: torch.Tensor, origin: str) -> str | None:
    """Compare calibration ``inputs`` ([N, *input_shape], already in the model's recorded preprocessing) with
    the model's own test inputs in that same preprocessing: their standard deviations (the spread) and means.

    Raises DataError, naming ``origin`` and both value ranges, when the spread differs by more than
    :data:`REFUSE_SPREAD_FACTOR` either way or the mean sits over :data:`REFUSE_SHIFT` of the model's
    standard deviations off; returns a one-line warning beyond :data:`WARN_SPREAD_FACTOR` / :data:`WARN_SHIFT`,
    else None. Statistics are over all values (float64); model.json's ``preprocessing`` (mean/std per
    channel, or null: raw inputs) has been applied to both sides.

    Example: ``check_calibration_range(source, calibration.inputs, "npz (train)")`` -> ``None``
    """
    reference = source.data.test.inputs[:_REFERENCE_SAMPLES]
    reference_mean, reference_std = _mean_and_std(reference)
    if not reference_std > 0:
        return None  # constant test inputs: no scale to compare with
    mean, std = _mean_and_std(inputs)
    spread = std / reference_std
    factor = max(spread, 1 / spread) if spread > 0 else float("inf")
    shift = abs(mean - reference_mean) / reference_std
    if factor <= WARN_SPREAD_FACTOR and shift <= WARN_SHIFT:
        return None
    direction = "wider" if spread >= 1 else "narrower"
    how = (f"are spread {factor:.3g}x {direction}" if factor > WARN_SPREAD_FACTOR else "") + \
          (" and " if factor > WARN_SPREAD_FACTOR and shift > WARN_SHIFT else "") + \
          (f"sit {shift:.3g} standard deviations off centre" if shift > WARN_SHIFT else "")
    facts = (f"its values span {_span(source, inputs)} where {source.stem}'s own test inputs span "
             f"{_span(source, reference)} ({_recorded(source)}), so in that preprocessing they {how}")
    if factor > REFUSE_SPREAD_FACTOR or shift > REFUSE_SHIFT:
        raise DataError(f"calibration data {origin} is not on the model's input scale: {facts}; int8 ranges "
                        "calibrated on it would not fit the model's real inputs. Give data on the model's own "
                        "scale (e.g. 0..255 pixels divided by 255), or leave out the calibration dataset to use "
                        "the model's training data")
    return (f"calibration data {origin} is on a somewhat different scale from the model's inputs: {facts}; "
            "check its preprocessing if int8 accuracy drops")


def _mean_and_std(inputs: torch.Tensor) -> tuple[float, float]:
    values = inputs.detach().double().flatten()
    return float(values.mean()), float(values.std(correction=0))


def _span(source: CheckpointSource, inputs: torch.Tensor) -> str:
    # In raw values, the scale a user knows their data by.
    normalizer = source.data.normalizer
    raw = normalizer.denormalize(inputs) if normalizer is not None else inputs
    return f"{float(raw.min()):.3g}..{float(raw.max()):.3g}"


def _recorded(source: CheckpointSource) -> str:
    preprocessing = source.metadata.get("preprocessing")
    if not isinstance(preprocessing, dict):
        return "model.json records no preprocessing: raw inputs"
    mean, std = (", ".join(f"{value:.3g}" for value in preprocessing.get(key, [])) for key in ("mean", "std"))
    return f"model.json's preprocessing: mean [{mean}], std [{std}]"
