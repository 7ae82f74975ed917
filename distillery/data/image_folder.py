"""A folder of image files, one subfolder per class, decoded once into a memory-mapped uint8 cache.

Two layouts are read: ``path/train/<class>/...`` beside ``path/test/<class>/...`` (the splits as given), or
``path/<class>/...`` (split here, stratified and seeded). The first load decodes every image with Pillow into
a ``[N, C, H, W]`` uint8 ``.npy`` file in the cache directory; later loads of unchanged files map that file
and decode nothing. Inputs are :class:`MemmapInputs`, scaled to float32 in [0, 1] per batch, exactly as the
``npy`` and IDX readers scale uint8 images.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distillery.atomic import atomic_write
from distillery.cache_dir import default_cache_dir
from distillery.data.dataset import ArrayDataset
from distillery.data.memmap import MemmapArray, MemmapInputs
from distillery.data.sources import DATASETS
from distillery.data.transforms import stratified_split
from distillery.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PROGRESS_ABOVE = 200  # images; fewer decode in about a second, where a bar is only noise
# Part of every fingerprint: bump it when decoding changes, so older caches are not reused.
CACHE_FORMAT = "distillery-image-folder-1"
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@DATASETS.register("imagefolder")
def load_image_folder(
    path: str | Path,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_names: list[str] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) splits of an image folder; inputs float32 ``[N, C, H, W]`` in [0, 1], labels int64 ``[N]``.

    ``channels``: 1 (grey) or 3 (RGB); None is 1 when every image is grey, else 3. ``image_size``: an int
    scales the shorter side to it and centre-crops a square; ``(h, w)`` scales to cover h x w and centre-crops;
    None requires one size throughout. Class names are the sorted subfolder names, or ``class_names`` (exactly
    those folders, in label order). Without train/ and test/ folders, ``test_fraction`` of each class (seeded
    by ``seed``) becomes the test split. The decoded array is cached under ``cache_dir`` (else
    ``$DISTILLERY_CACHE``, ``$XDG_CACHE_HOME/distillery`` or ``~/.cache/distillery``).

    Raises DataError for a missing folder, no class folders, an empty class, an unreadable image, mixed sizes
    without ``image_size``, or train and test with different classes; ConfigError for a bad option.

    Example::

        train, test = load_image_folder("flowers/", image_size=64, channels=3)
        train.input_shape  # (3, 64, 64)
    """
    root = _root(path)
    size = checked_size(image_size)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels {channels!r} is not supported; use 1 (grey), 3 (RGB) or leave it unset")
    folders = _split_folders(root)
    names = _resolve_class_names(root, folders, class_names)
    files, labels, splits = _listing(root, folders, names)
    if splits is None:  # split before decoding, so that a bad test_fraction fails at once
        train_rows, test_rows = stratified_split(labels, test_fraction, seed)
        sources = f"{root} (train)", f"{root} (test)"
    else:
        train_rows, test_rows = np.flatnonzero(splits == 0), np.flatnonzero(splits == 1)
        sources = str(root / "train"), str(root / "test")
    inputs = MemmapInputs(_cached_array(root, files, size, channels, cache_dir))
    return split_datasets(inputs, labels, names, (train_rows, test_rows), sources)


def split_datasets(inputs: MemmapInputs, labels: np.ndarray, names: list[str], rows: Sequence[np.ndarray],
                   sources: Sequence[str]) -> tuple[ArrayDataset, ArrayDataset]:
    """The (train, test) datasets of one decoded cache: the samples at each split's ``rows``."""
    return tuple(
        ArrayDataset(inputs.take(torch.from_numpy(split)), torch.from_numpy(labels[split]), names, source)
        for split, source in zip(rows, sources)
    )


def existing_path(path: str | Path | None, what: str, needs: str) -> Path:
    """``path`` when it exists; ConfigError naming what ``data.path`` ``needs`` when unset, DataError when missing."""
    if path is None:
        raise ConfigError(f"{what} needs data.path: {needs}")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{what} {root} does not exist; check the data path")
    return root


def _root(path: str | Path | None) -> Path:
    root = existing_path(path, "an image folder", "a directory of class folders (or train/ and test/)")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory; point the data path at the folder of class folders")
    return root


def checked_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size):
        raise ConfigError(f"image_size {image_size!r} is not a positive int or a pair (height, width) of them")
    return size


def _subfolders(directory: Path) -> list[Path]:
    # Hidden folders (.git, .ipynb_checkpoints) are tooling, not classes.
    return sorted(entry for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _split_folders(root: Path) -> dict[str, list[Path]]:
    """{"train": class folders, "test": class folders}, or {"all": class folders} for a flat layout."""
    names = {folder.name for folder in _subfolders(root)}
    if {"train", "test"} <= names:
        folders = {split: _subfolders(root / split) for split in ("train", "test")}
        train_names, test_names = ({f.name for f in folders[s]} for s in ("train", "test"))
        if train_names != test_names:
            raise DataError(f"{root / 'test'} and {root / 'train'} hold different classes (only in test: "
                            f"{sorted(test_names - train_names)}, only in train: {sorted(train_names - test_names)}); "
                            "give both splits the same class folders")
    elif names & {"train", "test"}:
        present, absent = ("train", "test") if "train" in names else ("test", "train")
        raise DataError(f"{root} has a {present}/ folder but no {absent}/; add {root / absent}/<class>/ folders, "
                        "or put the class folders directly in it")
    else:
        folders = {"all": _subfolders(root)}
    for split, class_folders in folders.items():
        where = root if split == "all" else root / split
        if not class_folders:
            has_images = any(_is_image(Path(file.name), file) for file in where.iterdir())
            loose = "holds images but " if has_images else "has no images and "
            raise DataError(f"{where} {loose}no class folders; put each class's images in a subfolder named after it")
    return folders


def _resolve_class_names(root: Path, folders: dict[str, list[Path]], class_names: list[str] | None) -> list[str]:
    found = [folder.name for folder in next(iter(folders.values()))]
    if class_names is None:
        return found
    if isinstance(class_names, str):
        raise ConfigError(f"class_names must be a list of names, not the string {class_names!r}")
    names = [str(name) for name in class_names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"class_names names {duplicates} more than once; name each class folder once")
    missing, unknown = sorted(set(found) - set(names)), sorted(set(names) - set(found))
    if missing or unknown:
        raise DataError(f"class_names do not match the class folders in {root}: folders not named {missing}, "
                        f"names with no folder {unknown}; list exactly the folders")
    return names


def _listing(
    root: Path, folders: dict[str, list[Path]], names: list[str]
) -> tuple[list[Path], np.ndarray, np.ndarray | None]:
    """Every image path (sorted by path below ``root``: the cache's row order), its label and its split (0/1)."""
    entries = []
    for split_index, class_folders in enumerate(folders.values()):
        for folder in class_folders:
            images = [file for file in folder.rglob("*") if _is_image(file.relative_to(folder), file)]
            if not images:
                raise DataError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                                "add some or remove the folder")
            entries += [(file.relative_to(root).as_posix(), file, names.index(folder.name), split_index)
                        for file in images]
    entries.sort(key=lambda entry: entry[0])
    files = [entry[1] for entry in entries]
    labels = np.array([entry[2] for entry in entries], dtype=np.int64)
    splits = np.array([entry[3] for entry in entries], dtype=np.int64) if len(folders) == 2 else None
    return files, labels, splits


def _is_image(relative: Path, file: Path) -> bool:
    # Dot files and folders (macOS "._x.png" resource forks, .ipynb_checkpoints) hold copies or non-images.
    hidden = any(part.startswith(".") for part in relative.parts)
    return relative.suffix.lower() in IMAGE_SUFFIXES and not hidden and file.is_file()


def folder_fingerprint(root: Path, files: list[Path], image_size: tuple[int, int] | None, channels: int | None) -> str:
    """sha256 over the files' paths below ``root``, sizes and modification times, and the decoding options."""
    hasher = hashlib.sha256(json.dumps([CACHE_FORMAT, image_size, channels]).encode())
    for file in files:
        stat = file.stat()
        hasher.update(f"\0{file.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return hasher.hexdigest()


def _cached_array(root: Path, files: list[Path], size: tuple[int, int] | None, channels: int | None,
                  cache_dir: str | Path | None) -> MemmapArray:
    """The cache file holding ``files`` decoded, written first when missing or not a [N, C, H, W] uint8 array."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = directory / f"image-folder-{folder_fingerprint(root, files, size, channels)[:32]}.npy"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the cache directory {directory} ({error}); set cache_dir or "
                        "$DISTILLERY_CACHE to a writable directory") from None
    return decoded_cache(target, files, size, channels)


def decoded_cache(target: Path, sources: Sequence, size: tuple[int, int] | None, channels: int | None) -> MemmapArray:
    """``target`` (a .npy named by a fingerprint of the sources and options) memory-mapped, after decoding every
    source (a file, or anything :func:`_decode_all` opens) into it when it is missing or not [N, C, H, W] uint8;
    ``channels`` None is 1 when every source is grey, else 3."""
    cached = _usable(target, len(sources))
    if cached is not None:
        return cached
    channels = channels or (1 if all(_is_grey(source) for source in sources) else 3)
    return MemmapArray(atomic_write(target, lambda temporary: _decode_all(sources, temporary, size, channels)))


def _usable(path: Path, count: int) -> MemmapArray | None:
    # Caches may come from anyone: the header is checked (never unpickled) and a bad file is rebuilt.
    if not path.is_file():
        return None
    try:
        cached = MemmapArray(path)
    except DataError:
        return None
    array = cached.array
    fits = array.dtype == np.uint8 and array.ndim == 4 and len(array) == count and array.shape[1] in (1, 3)
    return cached if fits else None


def _open(file: Path):
    from PIL import Image  # deferred: only a cache miss needs Pillow

    try:
        return Image.open(file)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {file} ({error}); replace or delete the file") from None


def _is_grey(file: Path) -> bool:
    with _open(file) as image:
        if image.mode == "P":  # a palette of greys only (common in GIFs) is a grey image
            palette = np.array(image.getpalette() or [0, 0, 1]).reshape(-1, 3)
            return bool((palette == palette[:, :1]).all())
        return image.mode in GREY_MODES


def _decode_all(files: list[Path], target: Path, size: tuple[int, int] | None, channels: int) -> None:
    from tqdm import tqdm  # deferred with Pillow: a cache hit imports neither

    first = _decode(files[0], size, channels)
    array = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(files), *first.shape))
    array[0] = first
    with tqdm(total=len(files), initial=1, desc="decoding images", unit="image", file=sys.stderr,
              disable=len(files) <= PROGRESS_ABOVE) as progress:
        for row, file in enumerate(files[1:], start=1):
            pixels = _decode(file, size, channels)
            if pixels.shape != first.shape:
                raise DataError(f"{file} is {pixels.shape[2]}x{pixels.shape[1]} but {files[0]} is "
                                f"{first.shape[2]}x{first.shape[1]} (width x height); set image_size to resize all")
            array[row] = pixels
            progress.update(1)
    array.flush()
    del array  # unmapped before the rename


def _decode(file: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image as uint8 ``[C, H, W]``: upright (EXIF), converted to L or RGB, resized and centre-cropped."""
    from PIL import Image, ImageOps

    with _open(file) as image:
        try:
            image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot decode image {file} ({error}); replace or delete the file") from None
    if size is not None:
        image = _cover_crop(image, size)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _cover_crop(image, size: tuple[int, int]):
    """Scale so the image covers ``size`` (height, width), keeping its aspect ratio, then cut out the centre."""
    from PIL import Image

    height, width = size
    if image.size == (width, height):
        return image  # no resampling: pixels of images already at the size stay exact
    scale = max(height / image.height, width / image.width)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(scaled, Image.Resampling.BILINEAR)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    return image.crop((left, top, left + width, top + height))
