"""The run folder as a whole: its metrics log and the lock that keeps a second training out of it."""
from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

from .checkpoint import CheckpointError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks there
    fcntl = None

__all__ = ["read_metrics", "lock_run_dir"]


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on ``RUN/.lock`` while this process trains there, so that a second training in the
    same folder is refused instead of interleaving its metrics and checkpoints with the first's.  The lock dies
    with the process, so a killed run never leaves the folder locked.  None where there is no ``fcntl``."""
    if fcntl is None:
        return None
    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system without flock
            warnings.warn(f"{run_dir}: cannot lock the run folder here ({e.strerror}); nothing stops a second "
                          "training in it", stacklevel=2)
            return None
        if holder == str(os.getpid()):
            raise CheckpointError(f"{run_dir}: an earlier Trainer in this process still holds this folder; call its "
                                  "close() or let it go") from None
        raise CheckpointError(f"{run_dir}: another training is running in this folder"
                              f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end, or stop it "
                              "and resume") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
