"""Data: datasets held as whole tensors, their sources, splits, normalisation, augmentation and batching."""
from distillery.data.augment import Augmentation, horizontal_flip, random_crop, random_shift
from distillery.data.batch import UNLABELED, Batch, as_batch, counted_positions, model_logits
from distillery.data.batches import BatchIterator
from distillery.data.dataset import ArrayDataset
from distillery.data.hf_images import load_hf_images
from distillery.data.image_folder import load_image_folder
from distillery.data.python_dataset import load_python_dataset
from distillery.data.sources import DATASETS, load_dataset, load_idx_pair, load_npz, read_idx
from distillery.data.tables import load_table
from distillery.data.transfer import filter_classes, labeled_mask, select_classes
from distillery.data.transforms import Normalizer, train_val_split

__all__ = [
    "ArrayDataset",
    "Augmentation",
    "Batch",
    "BatchIterator",
    "DATASETS",
    "Normalizer",
    "UNLABELED",
    "as_batch",
    "counted_positions",
    "filter_classes",
    "horizontal_flip",
    "labeled_mask",
    "load_dataset",
    "load_hf_images",
    "load_idx_pair",
    "load_image_folder",
    "load_npz",
    "load_python_dataset",
    "load_table",
    "model_logits",
    "random_crop",
    "random_shift",
    "read_idx",
    "select_classes",
    "train_val_split",
]
