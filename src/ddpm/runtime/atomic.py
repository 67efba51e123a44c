"""Atomic file writes: a reader sees the old file or the new one, never a half-written file.

Everything the project writes (pictures, JSON, checkpoints) goes through here.  Temporary files get the
permissions an ordinary ``open(path, "w")`` would give (``mkstemp``'s private 0600 is widened per the umask).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write_path", "write_json_atomic", "default_mode", "fsync_path"]


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, not from every writer thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def default_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under the process umask (as read at import)."""
    return (0o777 if directory else 0o666) & ~_UMASK


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (a rename into it), to disk.  Folders cannot be opened for
    this on every system (Windows); there the rename is left to the file system."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The temporary name is hidden (leading ".") and keeps ``path``'s suffix, so writers that pick a format
    from the extension (Pillow, numpy.savez) behave.  On an exception the temporary file is removed and
    ``path`` is left as it was.  Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        fsync_path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    with atomic_write_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
