"""Images from files: a folder of pictures or one ``.npy`` / ``.npz`` array, read with Pillow and NumPy, converted
to uint8 (N, C, H, W) at the asked size and channel count (the rules are in :mod:`ddpm.data.datasets`' docstring).
Every bad file is a one-line :class:`~ddpm.data.errors.DataError` naming it."""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import DataError
from .pictures import IMAGE_EXTENSIONS, open_image
from .tables import EncodedImages, table_files

__all__ = ["NPZ_IMAGE_KEYS", "LABEL_KEYS", "list_images", "read_array", "load_folder",
           "load_array", "native_shape", "conform", "fit_pil", "pil_to_chw", "to_nhwc", "read_picture",
           "array_to_uint8", "array_to_nchw", "scan_images"]

#: the keys of an .npz that hold the images, in order of preference
NPZ_IMAGE_KEYS = ("images", "x", "arr_0")
#: the keys of an .npz that hold class labels
LABEL_KEYS = ("y", "labels")


def fit_pil(img, size: int, mode: str):
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


def pil_to_chw(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def conform(images: np.ndarray, size: int, channels: int) -> np.ndarray:
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
        out[i] = pil_to_chw(fit_pil(img, size, mode))
    return out


# ------------------------------------------------------------------------------------------ image folder

def scan_images(folder, stat: bool = False) -> list[tuple]:
    """(relative posix name,) of every image below ``folder`` (hidden names skipped, symlinked folders not
    entered), sorted by that name; with ``stat`` (name, size, mtime in ns).  String work only: 50,000 files in
    well under a second."""
    found = []

    def walk(path: str, prefix: str) -> None:
        with os.scandir(path) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    if not e.is_symlink():
                        walk(e.path, prefix + e.name + "/")
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    if stat:
                        st = e.stat()
                        found.append((prefix + e.name, st.st_size, st.st_mtime_ns))
                    else:
                        found.append((prefix + e.name,))
    walk(os.fspath(folder), "")
    found.sort()
    return found


def list_images(folder: Path) -> list[Path]:
    """Every image below ``folder``, in sorted relative-path order (see :func:`scan_images`)."""
    folder = Path(folder)
    return [folder / found[0] for found in scan_images(folder)]


def _note_enlarged(source, count: int, total: int, size: int) -> None:
    if count:
        warnings.warn(f"{source}: {count} of {total} images are smaller than {size}x{size} and were enlarged to it "
                      "(bicubic); pass a smaller --image-size to train at their own size", stacklevel=3)


def load_folder(folder: Path, image_size: int, channels: int, progress: bool = False) -> np.ndarray:

    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)}); "
                        "point the data source at a folder that contains images")
    mode = "L" if channels == 1 else "RGB"
    s = image_size
    out = np.empty((len(paths), channels, s, s), dtype=np.uint8)
    enlarged = made_grey = 0
    shown = tqdm(paths, desc=f"loading {folder}", unit="image", leave=False, disable=not progress or len(paths) < 1000)
    for i, p in enumerate(shown):
        with open_image(p) as img:
            enlarged += min(img.size) < s
            made_grey += mode == "L" and img.mode in ("RGB", "RGBA", "CMYK", "YCbCr")
            try:
                out[i] = pil_to_chw(fit_pil(img, s, mode))
            except (OSError, ValueError) as e:
                raise DataError(f"{p}: cannot read this image ({type(e).__name__}: {e}); "
                                "delete or replace the file") from None
    _note_enlarged(folder, enlarged, len(paths), s)
    if made_grey:  # a folder mixing grey and colour takes its channel count from its first image
        warnings.warn(f"{folder}: {made_grey} of {len(paths)} images are in colour and were converted to grey "
                      "(channels 1); pass --channels 3 to keep the colour", stacklevel=2)
    return out


# ------------------------------------------------------------------------------------------ array files

def read_array(path: Path, header_only: bool = False, mmap: bool = False):
    """The image array of a .npy/.npz file; with ``header_only`` just its shape, without reading the data; with
    ``mmap`` a .npy comes back memory-mapped copy-on-write (read from disk as it is used; an .npz is read whole).
    The key rule of an .npz: :data:`NPZ_IMAGE_KEYS` in order, else the only array that is not a label array."""
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if header_only else "c" if mmap else None)
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
        key = next((k for k in NPZ_IMAGE_KEYS if k in names), others[0] if len(others) == 1 else None)
        if key is None:
            raise DataError(f"{path}: holds the arrays {', '.join(names)} and none is named "
                            f"{' or '.join(map(repr, NPZ_IMAGE_KEYS))}; save the images under the key 'images'")
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


def array_to_uint8(a: np.ndarray, path: Path) -> np.ndarray:
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


def array_to_nchw(a: np.ndarray, path: Path) -> np.ndarray:
    axis = _channel_axis(a.shape, path)
    return a[:, None] if axis is None else a.transpose(0, 3, 1, 2) if axis == 3 else a


def load_array(path: Path, image_size: int, channels: int) -> np.ndarray:
    a = read_array(path)
    a = array_to_nchw(array_to_uint8(a, path), path)
    if a.shape[0] == 0 or a.shape[2] == 0 or a.shape[3] == 0:
        raise DataError(f"{path}: array of shape {a.shape} holds no images; save at least one image")
    if min(a.shape[2], a.shape[3]) < image_size:
        _note_enlarged(path, len(a), len(a), image_size)
    return conform(np.ascontiguousarray(a), image_size, channels)


def native_shape(source) -> tuple[int, int]:
    """(channels, size) of the images in an array file or image folder as stored: 1 for grey, 3 for colour; size
    is the short side (what :func:`load_images` would keep without resizing).  For a folder, its first image."""
    path = Path(source)
    table = table_files(path)
    if table is not None:
        found = EncodedImages(path, *table)
        if not len(found):
            raise DataError(f"{path}: the table has no rows; add images")
        with found.open(0) as img:
            return (1 if img.mode in _GREY_MODES else 3), min(img.size)
    if path.is_dir():
        paths = list_images(path)
        if not paths:
            raise DataError(f"{path}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        with open_image(paths[0]) as img:
            return (1 if img.mode in _GREY_MODES else 3), min(img.size)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    shape = tuple(read_array(path, header_only=True))  # the shape alone: the data is read once, by load_images
    axis = _channel_axis(shape, path)
    if axis == 1:
        return shape[1], min(shape[2:])
    return (1 if axis is None else shape[3]), min(shape[1:3])


# ------------------------------------------------------------------------------------------ one picture

def to_nhwc(a, where) -> np.ndarray:
    """The layout normaliser for pictures: (H, W), (H, W, C), (N, H, W), (N, H, W, C) or (N, C, H, W) with C in
    {1, 3, 4} -> (N, H, W, C), as uint8 (see :func:`array_to_uint8` for the dtypes taken).  A 3-dim array is one
    picture (H, W, C) when its last axis is 1, 3 or 4, else N grey pictures; a 4-dim array follows the rule of the
    training arrays (:mod:`ddpm.data.datasets`), with 4 (RGBA) allowed as well.  ``where`` names it in errors."""
    a = array_to_uint8(np.asarray(a), where)
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None] if a.shape[-1] in (1, 3, 4) else a[..., None]
    elif a.ndim == 4 and a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: a picture array of shape {np.shape(a)}; pass (H, W), (H, W, C), (N, H, W), "
                        "(N, H, W, C) or (N, C, H, W) with C = 1, 3 or 4")
    return a


def read_picture(path) -> np.ndarray:
    """A picture file as uint8 (N, H, W, C): an image (PNG, JPEG, ...: N = 1; C = 1 grey, 3 RGB or 4 with alpha)
    or a .npy/.npz array of images (the .npz key rule of :func:`read_array`, the layouts of :func:`to_nhwc`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a PNG, a JPEG or a .npy/.npz of images")
    if path.suffix.lower() in (".npy", ".npz"):
        return to_nhwc(read_array(path), path)
    with open_image(path) as img:
        img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "PA", "P") else
                          "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
        a = np.asarray(img, dtype=np.uint8)
    return (a[..., None] if a.ndim == 2 else a)[None]
