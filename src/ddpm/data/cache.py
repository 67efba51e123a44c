"""Decode once, in parallel, into a memory-mapped uint8 cache (N, C, H, W); later starts map it from disk.

A cache file is ``<key>.npy`` in the cache folder (:func:`default_cache_dir` unless one is given): a plain
``.npy`` array followed by a footer (magic, byte count, CRC-32 of sampled blocks).  ``key`` is a SHA-256 of what
the images were made from: every source file's name, size and modification time, the image size, the channels and
the resize rule (:data:`RESIZE_RULE`), so a changed, added or removed file makes a new cache.

Writing: the images are decoded on every core the process may use (Pillow releases the GIL while it decodes and
resizes, so threads suffice) into a temporary file with a name of its own (``<key>.<pid>.<random>.tmp``), which is
flushed, given its footer, fsynced and only then renamed onto ``<key>.npy`` (``os.replace``, atomic).  A process
killed while writing leaves a temporary file, never a cache.  Two processes building the same cache take turns on
a lock file (``fcntl.flock`` where there is one; elsewhere both build and the last rename wins, both files being
the same bytes).  Reading: a cache whose size, header or footer is wrong, or whose sampled blocks do not match the
footer's CRC, is deleted and rebuilt, never read.  What the sampled CRC cannot see (a flipped byte between the
sampled blocks of a cache of full size) is in docs/performance.md, "Data start-up".
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .errors import DataError
from .files import fit_pil, pil_to_chw

__all__ = ["RESIZE_RULE", "CACHE_VERSION", "default_cache_dir", "file_fingerprint", "cache_key", "cached_decode",
           "open_cache", "decode_workers", "decode_parallel"]

#: the rule that turns a picture into size x size (see :func:`ddpm.data.files.fit_pil`); part of every key
RESIZE_RULE = "convert(L|RGB); short side to size (LANCZOS down, BICUBIC up); centre crop"
CACHE_VERSION = 1
_MAGIC = b"DDPMC\x00\x01\x00"
_FOOTER = struct.Struct("<8sQI4x")  # magic, data bytes, CRC-32 of the sampled blocks
_BLOCK = 1 << 20
_SAMPLES = 64
_CHUNK = 64  # images per decode task


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ddpm`` when XDG_CACHE_HOME is set, else ``~/.cache/ddpm``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddpm"


def decode_workers() -> int:
    """The number of cores this process may use (its CPU affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def file_fingerprint(paths: Sequence[Path], root: Path) -> list[list]:
    """[relative name, size, mtime in ns] of each file: what a cache of them depends on."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([Path(p).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def cache_key(kind: str, fingerprint: list, image_size: int, channels: int) -> str:
    """The cache's name: a SHA-256 (first 32 hex digits) of the version, the kind of source, the files' fingerprint,
    the image size, the channels and the resize rule."""
    blob = json.dumps([CACHE_VERSION, kind, RESIZE_RULE, int(image_size), int(channels), fingerprint],
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _sampled_crc(f, offset: int, nbytes: int) -> int:
    """CRC-32 of up to :data:`_SAMPLES` blocks of 1 MiB spread evenly over the data (all of it when small)."""
    crc = 0
    starts = range(0, nbytes, _BLOCK) if nbytes <= _SAMPLES * _BLOCK else \
        sorted({int(s) // _BLOCK * _BLOCK for s in np.linspace(0, nbytes - _BLOCK, _SAMPLES)})
    for s in starts:
        f.seek(offset + s)
        crc = zlib.crc32(f.read(min(_BLOCK, nbytes - s)), crc)
    return crc


def _header_len(path: Path) -> tuple[int, tuple, np.dtype]:
    with open(path, "rb") as f:
        fmt = np.lib.format
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
        if read is None:
            raise ValueError("not a version 1 or 2 .npy header")
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError("a Fortran-ordered array")
        return f.tell(), shape, dtype


def open_cache(path: Path, shape: tuple | None = None) -> np.ndarray | None:
    """The cache at ``path`` memory-mapped copy-on-write, or None when it is missing, truncated, corrupt or not
    of ``shape`` (then it is deleted)."""
    try:
        offset, found, dtype = _header_len(path)
        nbytes = int(np.prod(found)) * dtype.itemsize
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            ok = f.tell() == offset + nbytes + _FOOTER.size and dtype == np.uint8 and len(found) == 4
            if ok:
                f.seek(offset + nbytes)
                magic, count, crc = _FOOTER.unpack(f.read(_FOOTER.size))
                ok = magic == _MAGIC and count == nbytes and crc == _sampled_crc(f, offset, nbytes)
        if ok and (shape is None or tuple(found) == tuple(shape)):
            return np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=found)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, struct.error):
        pass
    warnings.warn(f"{path}: the data cache is truncated or corrupt; rebuilding it", stacklevel=3)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return None


@contextlib.contextmanager
def _locked(lock_path: Path):
    try:
        f = open(lock_path, "a+b")
    except OSError as e:
        raise DataError(f"{lock_path.parent}: the data cache folder is not writable ({type(e).__name__}: "
                        f"{e.strerror or e}); pass --data-cache DIR naming a writable folder") from None
    try:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): unique temporary names and the atomic rename still hold
            fcntl = None
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        f.close()  # closing drops the lock


def _decode_into(out: np.ndarray, indices: range, decode: Callable, image_size: int, mode: str):
    """Decode images ``indices`` into ``out``; (errors [(index, reason)], enlarged count, made-grey count)."""
    errors, enlarged, grey = [], 0, 0
    for i in indices:
        try:
            with decode(i) as img:
                enlarged += min(img.size) < image_size
                grey += mode == "L" and img.mode in ("RGB", "RGBA", "CMYK", "YCbCr")
                out[i] = pil_to_chw(fit_pil(img, image_size, mode))
        except DataError as e:
            errors.append((i, str(e)))
        except (OSError, ValueError, SyntaxError) as e:
            errors.append((i, f"cannot read this image ({type(e).__name__}: {e})"))
    return errors, enlarged, grey


def decode_parallel(out: np.ndarray, decode: Callable, names: Callable, where: str = "the images",
                    progress: bool = False) -> None:
    """Decode image i (``decode(i)``, an open PIL image) into ``out[i]`` (uint8 (N, C, S, S)) for every i, on
    :func:`decode_workers` threads, with a progress bar.  Every image is tried; unreadable ones are reported in one
    :class:`DataError` naming the first (``names(i)``) and counting the rest."""
    count, channels, image_size = out.shape[0], out.shape[1], out.shape[2]
    mode = "L" if channels == 1 else "RGB"
    chunks = [range(s, min(s + _CHUNK, count)) for s in range(0, count, _CHUNK)]
    errors, enlarged, grey = [], 0, 0
    bar = tqdm(total=count, desc=f"decoding {where}", unit="image", leave=False, disable=not progress)
    with ThreadPoolExecutor(decode_workers()) as pool:
        for chunk, (e, n, g) in zip(chunks, pool.map(lambda c: _decode_into(out, c, decode, image_size, mode),
                                                     chunks)):
            errors += e
            enlarged, grey = enlarged + n, grey + g
            bar.update(len(chunk))
    bar.close()
    if errors:
        i, reason = errors[0]
        more = f" (and {len(errors) - 1} more unreadable images of {count})" if len(errors) > 1 else ""
        reason = reason if reason.startswith(str(names(i))) else f"{names(i)}: {reason}"
        raise DataError(f"{reason.split('; delete')[0]}{more}; delete or replace the file(s)")
    if enlarged:
        warnings.warn(f"{where}: {enlarged} of {count} images are smaller than {image_size}x{image_size} and were "
                      "enlarged to it (bicubic); pass a smaller --image-size to train at their own size", stacklevel=3)
    if grey:
        warnings.warn(f"{where}: {grey} of {count} images are in colour and were converted to grey (channels 1); "
                      "pass --channels 3 to keep the colour", stacklevel=3)


def _build(tmp: Path, count: int, decode: Callable, names: Callable, image_size: int, channels: int,
           where: str, progress: bool) -> None:
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, channels, image_size, image_size))
    decode_parallel(out, decode, names, where, progress)
    out.flush()
    offset, nbytes = out.offset, out.nbytes
    del out
    with open(tmp, "r+b") as f:
        crc = _sampled_crc(f, offset, nbytes)
        f.seek(offset + nbytes)
        f.write(_FOOTER.pack(_MAGIC, nbytes, crc))
        f.flush()
        os.fsync(f.fileno())


def _clear_stale(folder: Path, key: str) -> None:
    """Delete temporary files of ``key`` left by processes that died while writing them."""
    for tmp in folder.glob(f"{key}.*.tmp"):
        try:
            os.kill(int(tmp.name.split(".")[1]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            pass


def cached_decode(key: str, count: int, decode: Callable, names: Callable, image_size: int, channels: int,
                  cache_dir=None, where: str = "the images", progress: bool = False) -> np.ndarray:
    """uint8 (count, channels, image_size, image_size), memory-mapped from the cache ``key`` in ``cache_dir``
    (default :func:`default_cache_dir`), decoded first if there is no valid cache.

    ``decode(i)``: image i as an open PIL image (a context manager; raise :class:`DataError` naming the file for
    an unreadable one); ``names(i)``: its name for errors.  Unreadable images are all tried, then reported in one
    line naming the first and counting the rest; nothing is cached then."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot make the data cache folder ({type(e).__name__}: {e.strerror or e}); "
                        "pass --data-cache DIR naming a writable folder") from None
    final = folder / f"{key}.npy"
    shape = (count, channels, image_size, image_size)
    with _locked(folder / f"{key}.lock"):
        found = open_cache(final, shape)
        if found is not None:
            return found
        _clear_stale(folder, key)
        tmp = folder / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            _build(tmp, count, decode, names, image_size, channels, where, progress)
            os.replace(tmp, final)
        except OSError as e:
            raise DataError(f"{folder}: cannot write the data cache ({type(e).__name__}: {e.strerror or e}); "
                            "pass --data-cache DIR naming a writable folder with room for "
                            f"{np.prod(shape) / 1e9:.2f} GB") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    found = open_cache(final, shape)
    if found is None:
        raise DataError(f"{final}: the data cache just written does not read back; check the disk")
    return found
