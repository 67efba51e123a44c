"""Class labels of a dataset, in the order :func:`ddpm.data.datasets.load_images` returns its images.

* the embedded digits (``"digits"``, ``"sklearn-digits"``): their own labels; the classes are "0" to "9" and
  label k is the digit k;
* a folder: one sub-folder per class (torchvision's ImageFolder layout).  The classes are the sub-folders'
  names sorted (Python string order); an image's label is the index of the top-level sub-folder it sits in, at
  any depth below it.  Every image must sit in a sub-folder and every class sub-folder must hold an image;
* an ``.npz`` file: an integer array ``y`` (else ``labels``) of shape (N,) beside the images, with the classes
  0..K-1 and each of them used (class names "0" to "K-1").  Whole-number floats are accepted as integers;
* a table (Parquet, a saved ``datasets`` folder): its integer ``label`` column, named by the table's ClassLabel
  feature when it has one (:mod:`ddpm.data.tables`).

Every bad label (none, the wrong length, a negative or fractional value, a class without an image, an image
outside the class folders) raises :class:`~ddpm.data.datasets.DataError` with one line naming the file and the fix.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .datasets import EMBEDDED, DataConfig, DataError
from .embedded import DIGIT_CLASSES, digits_split, sklearn_digits_split
from .files import LABEL_KEYS, list_images, read_array
from .pictures import IMAGE_EXTENSIONS
from .tables import LABEL_COLUMN, table_files, table_labels

__all__ = ["load_labels", "class_folders", "check_labels"]


def class_folders(folder) -> list[str]:
    """The class names of a one-folder-per-class image folder: its sub-folders' names (hidden ones skipped),
    sorted."""
    folder = Path(folder)
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_labels(folder: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    names = class_folders(folder)
    if not names:
        raise DataError(f"{folder}: class labels come from sub-folders, one per class, and this folder has none; "
                        "put each class's images in a sub-folder named after the class")
    index = {name: k for k, name in enumerate(names)}
    labels = []
    for p in list_images(folder):
        parts = p.relative_to(folder).parts
        if len(parts) == 1:
            raise DataError(f"{p}: sits in {folder} itself, outside the class sub-folders; move it into the "
                            "sub-folder of its class (or out of the folder)")
        labels.append(index[parts[0]])
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{folder / empty[0]}: a class sub-folder with no images ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add its images or remove the folder")
    return labels, tuple(names)


def check_labels(labels: np.ndarray, num_images: int, where) -> np.ndarray:
    """``labels`` as int64 (N,) after checking that they are whole numbers >= 0, one per image, and that every
    class 0..max is used; a one-line :class:`DataError` naming ``where`` otherwise."""
    a = np.asarray(labels)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"{where}: class labels have dtype {a.dtype}; save them as integers 0..K-1")
    if a.ndim != 1:
        raise DataError(f"{where}: class labels have shape {a.shape}; save one integer per image, shape (N,)")
    if len(a) != num_images:
        raise DataError(f"{where}: {len(a)} class labels for {num_images} images; save one label per image")
    if np.issubdtype(a.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if len(bad):
            raise DataError(f"{where}: class label {a[bad[0]]} (image {bad[0]}) is not a whole number; "
                            "labels are integers 0..K-1")
    if len(a) and a.min() < 0:
        k = int(np.argmin(a))
        raise DataError(f"{where}: class label {a[k]:g} (image {k}) is negative; labels are integers 0..K-1")
    a = a.astype(np.int64)
    counts = np.bincount(a) if len(a) else np.zeros(0, dtype=np.int64)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise DataError(f"{where}: class {empty[0]} has no image (labels run 0..{len(counts) - 1}); "
                        "number the classes 0..K-1 without gaps")
    return a


def _array_labels(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: a {path.suffix or 'plain'} file holds images only; save images and labels together "
                        "with numpy.savez(path, images=images, y=labels)")
    num_images = read_array(path, header_only=True)[0]
    try:
        with np.load(path, allow_pickle=False) as loaded:
            key = next((k for k in LABEL_KEYS if k in loaded.files), None)
            if key is None:
                looked = " or ".join(map(repr, LABEL_KEYS))
                raise DataError(f"{path}: holds no class labels (looked for an array {looked}); "
                                "save them with numpy.savez(path, images=images, y=labels)")
            labels = loaded[key]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read the class labels ({type(e).__name__}: {e}); save them again with "
                        "numpy.savez as a plain integer array") from e
    labels = check_labels(labels, num_images, f"{path} ({key!r})")
    return labels, tuple(str(k) for k in range(int(labels.max()) + 1))


def load_labels(config: DataConfig) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(labels int64 (N,), class names) of the images :func:`~ddpm.data.datasets.load_images` reads for
    ``config``, in the same order: label k means ``class_names[k]``."""
    source = config.source
    if source in EMBEDDED:
        split = digits_split if source == "digits" else sklearn_digits_split
        return split(config.split)[1], DIGIT_CLASSES
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass 'digits', 'sklearn-digits', an image folder, "
                        "or a .npz file")
    if table_files(path) is not None:
        raw, names = table_labels(path)
        labels = check_labels(raw, len(raw), f"{path} ({LABEL_COLUMN!r})")
        if names is not None and labels.max() >= len(names):
            raise DataError(f"{path}: class label {labels.max()} but the table names {len(names)} classes; "
                            "fix the labels or the ClassLabel names")
        names = names or tuple(str(k) for k in range(int(labels.max()) + 1))
        return torch.from_numpy(labels), names
    labels, names = _folder_labels(path) if path.is_dir() else _array_labels(path)
    return torch.from_numpy(labels), names
