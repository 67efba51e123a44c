"""The run folder as a whole: its metrics log and the lock that keeps a second training out of it."""
from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

from ..runtime.atomic import atomic_write_path
from .checkpoint import CheckpointError
from .plots import plot_loss_curve

try:
    import fcntl
except ImportError:  # Windows: no advisory locks there
    fcntl = None

__all__ = ["ROW_LOGS", "read_metrics", "lock_run_dir", "tidy_run_dir"]


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


def tidy_run_dir(run_dir: Path, step: int) -> None:
    """Make the folder read as one run up to ``step``: metric and eval rows and previews logged after it go (a
    resume repeats those steps; a fresh start in a folder left by a run that died before its first
    checkpoint is at step 0), and so do the temporary folders of saves that were killed midway."""
    _truncate_metrics(run_dir, step)
    for old in (run_dir / "previews").glob("step_*.png"):
        if old.stem[5:].isdigit() and int(old.stem[5:]) > step:
            old.unlink()
    for pattern in (".tmp_step_*", ".old_step_*"):
        for leftover in (run_dir / "checkpoints").glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
    loss_png = run_dir / "loss.png"
    if loss_png.is_file():
        rows = read_metrics(run_dir / "metrics.jsonl") if step else []
        if rows:
            plot_loss_curve(rows, loss_png)
        else:
            loss_png.unlink()


#: the run's row logs: the training metrics, and the quality measured while training (``--eval-every``)
ROW_LOGS = ("metrics.jsonl", "eval.jsonl")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows logged after the restored checkpoint, so the logs read as one uninterrupted run."""
    for name in ROW_LOGS:
        path = run_dir / name
        if path.is_file():
            rows = [r for r in read_metrics(path) if r["step"] <= step]
            with atomic_write_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
