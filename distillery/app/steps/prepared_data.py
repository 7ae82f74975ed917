"""Build step 1, the data: load, limit, split and normalise a run's dataset, and its transfer set."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import torch
from pydantic import ValidationError

from distillery.app.config import DataConfig, TransferConfig
from distillery.data import (
    ArrayDataset,
    Augmentation,
    Normalizer,
    filter_classes,
    labeled_mask,
    load_dataset,
    select_classes,
    train_val_split,
)
from distillery.errors import CheckpointError, DataError, ModelError
from distillery.teachers.inputs import teacher_normalizer

# Every run of a comparison must validate and test on the same samples, whatever its own seed.
SPLIT_SEED = 0


@dataclass
class PreparedData:
    train: ArrayDataset          # raw pixels: augmentation works on them, normalisation follows per batch
    val: ArrayDataset | None     # normalised
    test: ArrayDataset           # normalised
    normalizer: Normalizer | None
    augmentation: Augmentation
    # Each training sample's row in the source's training split (what outputs computed elsewhere are aligned
    # to), or None when the transfer set comes from another source.
    train_rows: torch.Tensor | None = None
    source_size: int = 0  # the samples of the source's training split


def seeded_subset(dataset: ArrayDataset, limit: int | None) -> ArrayDataset:
    if limit is None or limit >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    return dataset.subset(torch.randperm(len(dataset), generator=generator)[:limit])


def split_off_validation(dataset: Any, fraction: float) -> tuple[Any, Any]:
    """``(train, val)``: a seeded ``fraction`` of any dataset with ``len`` and ``subset`` (token blocks, texts) held
    out for validation, both in their original order; val is None for fraction 0 or a single sample."""
    if fraction <= 0 or len(dataset) < 2:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SPLIT_SEED))
    count = max(1, round(len(dataset) * fraction))
    return dataset.subset(order[count:].sort().values), dataset.subset(order[:count].sort().values)


def transfer_set(train: ArrayDataset, transfer: TransferConfig) -> ArrayDataset:
    """The training split, or another source's training data, restricted to the chosen classes."""
    if transfer.dataset is not None:
        train = seeded_subset(load_dataset(transfer.dataset, transfer.path)[0], transfer.limit)
    elif transfer.limit is not None:
        train = seeded_subset(train, transfer.limit)
    if transfer.classes or transfer.exclude_classes:
        train = filter_classes(train, transfer.classes, transfer.exclude_classes)
    return train


def prepare_data(data: DataConfig, preprocessing: Normalizer | dict[str, Any] | None = None,
                 transfer: TransferConfig | None = None, *, preprocessing_of: str = "the teacher") -> PreparedData:
    """Load, limit, split and normalise; ``preprocessing`` (a teacher's) replaces fitting a new normaliser.

    With ``transfer``, the training set becomes that transfer set; validation and test stay the
    evaluation dataset's, over all its classes. ``preprocessing_of`` names whose preprocessing it is
    (``"teacher runs/teacher"``) in the DataError raised when it expects other channels than the data has.
    """
    loaded, test = load_dataset(data.dataset, data.path, **data.source_options())
    test = seeded_subset(test, data.test_limit)
    train, val, all_classes = _training_split(loaded, data, transfer)
    # The same selections on the samples' row numbers: which row of the source each training sample is.
    # (float32 counts exactly to 2^24 rows, which the numbers are kept below).
    train_rows = None
    if (transfer is None or transfer.dataset is None) and len(loaded) < 2 ** 24:
        rows = ArrayDataset(torch.arange(len(loaded), dtype=torch.float32)[:, None], loaded.labels,
                            list(loaded.class_names), "rows")
        train_rows = _training_split(rows, data, transfer)[0].inputs[:, 0].long()
    if data.classes is not None:
        test = select_classes(test, data.classes)
    if transfer is not None:
        if train.input_shape != test.input_shape:
            raise DataError(f"the transfer set ({train.source}) has inputs of shape {train.input_shape} but the "
                            f"evaluation data has {test.input_shape}; both must feed the same student")
        if transfer.labels and train.class_names != test.class_names:
            raise DataError(f"the transfer set ({train.source}) names its classes differently from the evaluation "
                            "data, so its labels cannot be used; set transfer.labels: false")
    if preprocessing is not None:
        normalizer = preprocessing if isinstance(preprocessing, Normalizer) else Normalizer.from_dict(preprocessing)
        check_channels(normalizer, test.input_shape, preprocessing_of)
    else:
        normalizer = Normalizer.fit(all_classes if data.classes else train) if data.normalize else None
    if normalizer is not None:
        val = normalizer.apply(val) if val is not None else None
        test = normalizer.apply(test)
    augmentation = Augmentation(data.augment.shift, data.augment.crop_padding, data.augment.flip)
    return PreparedData(train, val, test, normalizer, augmentation, train_rows, len(loaded))


def check_channels(normalizer: Normalizer, input_shape: tuple[int, ...], owner: str) -> None:
    """Refuse data whose channels (images) or features (tables) are not those ``owner``'s inputs were normalised
    over, naming the setting that fixes it."""
    expected, found = len(normalizer.mean), input_shape[0] if input_shape else 1
    if expected in (1, found):
        return
    if len(input_shape) >= 2:
        colour = {1: "grey", 3: "RGB"}
        raise DataError(f"{owner} was trained on {colour.get(expected, expected)} images ({expected} channels) but "
                        f"the data's images have {found} (inputs {tuple(input_shape)}); set data.channels: "
                        f"{expected} to read them as it was trained on them")
    raise DataError(f"{owner} was trained on {expected} input features but the data has {found}; choose the "
                    "teacher's columns with data.feature_columns, or give it the table it was trained on")


def _training_split(loaded: ArrayDataset, data: DataConfig, transfer: TransferConfig | None
                    ) -> tuple[ArrayDataset, ArrayDataset | None, ArrayDataset]:
    """The training samples (the transfer set, with ``transfer``), the validation ones, and the training
    split over all classes (what a normaliser is fitted on: models of class subsets then share their inputs)."""
    train, val = train_val_split(seeded_subset(loaded, data.train_limit), data.val_fraction, seed=SPLIT_SEED)
    all_classes = train
    if data.classes is not None:
        train = select_classes(train, data.classes)
        val = select_classes(val, data.classes) if val is not None else None
    if transfer is not None:
        train = transfer_set(train, transfer)
    return train, val, all_classes


def check_model_fits(metadata: dict[str, Any], dataset: ArrayDataset, path: str | Path, role: str,
                      classes: bool = True) -> None:
    shape = tuple(dataset.input_shape)
    if tuple(metadata["input_shape"]) != shape:
        raise ModelError(f"{role} {path} takes inputs of shape {tuple(metadata['input_shape'])} "
                         f"but the data has {shape}; use the data the {role} was trained for")
    if classes and int(metadata["num_classes"]) != dataset.num_classes:
        raise ModelError(f"{role} {path} predicts {metadata['num_classes']} classes but the data "
                         f"has {dataset.num_classes}; the {role} and the data must share their classes")


def label_options(transfer: TransferConfig | None, size: int) -> dict[str, Any]:
    """All labels, none (soft targets only), or a seeded share of them."""
    if transfer is None:
        return {}
    if transfer.labeled_fraction is not None and transfer.labeled_fraction < 1.0:
        return {"labeled": labeled_mask(size, transfer.labeled_fraction, seed=SPLIT_SEED)}
    return {"with_labels": transfer.labels}


def checkpoint_data(path: str | Path, metadata: dict[str, Any], *, dataset: str | None = None,
                    data_path: str | None = None, test_limit: int | None = None,
                    allow_factories: Collection[str] = ()) -> PreparedData:
    """A checkpoint's recorded dataset (or ``dataset``) in its recorded preprocessing, checked to fit the model.

    There is no validation split: ``train`` is the whole training split (raw), ``test`` is normalised.

    Example::

        model, metadata = load_model("runs/distilled")
        test = checkpoint_data("runs/distilled", metadata).test
    """
    if metadata.get("task") in ("language_model", "text_classification"):
        raise CheckpointError(f"{path} is a {metadata['task'].replace('_', ' ')} run, read from text; evaluate, "
                              "export and quantize take image and table classifiers: its test evaluation is in its "
                              "evaluation.json, `distillery report` compares such runs and `distillery generate` "
                              "shows a language model's text")
    recorded = metadata.get("dataset") or {}
    # The reader's options (image size, label column) recorded with the checkpoint: data, checked like a config.
    options = recorded.get("options") if dataset is None and isinstance(recorded.get("options"), dict) else {}
    # A file may name code only where the user allows it: a recorded dataset factory is such a name.
    factory = options.get("factory")
    if factory is not None and (not isinstance(factory, str) or factory not in allow_factories):
        raise CheckpointError(f"{path} records its data as made by {factory!r}, which runs code; allow it with "
                              f"--allow-factory {factory}, or evaluate on other data with --dataset")
    try:
        data_config = DataConfig(dataset=dataset or recorded.get("name", "digits"),
                                 path=data_path if dataset or data_path else recorded.get("path"),
                                 test_limit=test_limit, val_fraction=0.0, normalize=False,
                                 classes=recorded.get("classes") if dataset is None else None, **options)
    except ValidationError as error:
        raise CheckpointError(f"{path}: the dataset its model.json records is not valid "
                              f"({error.errors()[0]['msg']}); evaluate it with --dataset and --data-path") from None
    data = prepare_data(data_config, teacher_normalizer(metadata.get("preprocessing"), str(path)),
                        preprocessing_of=f"the model {path}")
    check_model_fits(metadata, data.test, path, "model")
    return data
