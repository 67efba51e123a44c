"""Where a run's numbers, pictures and config go while it trains: one small interface, one class per backend.

Every logger has ``scalars(step, values)`` (tag -> number, tags such as ``train/loss`` or ``eval/fd``),
``image(step, tag, array)`` (H x W x C uint8), ``text(step, tag, text)`` and ``close()``.  ``metrics.jsonl`` is
written by :class:`~ddpm.training.log.TrainingLog` in every run; :data:`LOGGERS` holds the optional backends
(``ddpm train --logger tensorboard,wandb``), each an extra of the package.  A new backend (MLflow, Aim) is one
class here and one entry in :data:`LOGGERS`.  Only rank 0 makes loggers.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
from pathlib import Path

import numpy as np

from ..runtime.atomic import write_json_atomic

__all__ = ["Logger", "Loggers", "TensorBoardLogger", "WandbLogger", "LOGGERS", "LoggerError", "check_loggers",
           "make_loggers"]


class LoggerError(ValueError):
    """A logger that cannot be used here (its package is missing); the message is one line that says how to fix it."""


class Logger:
    """The interface (every method a no-op here): a backend overrides what it can show."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        pass

    def text(self, step: int, tag: str, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class Loggers(Logger):
    """Several loggers behind the one interface (none: every call does nothing)."""

    def __init__(self, loggers=()):
        self.loggers = list(loggers)

    def scalars(self, step, values):
        for lg in self.loggers:
            lg.scalars(step, values)

    def image(self, step, tag, image):
        for lg in self.loggers:
            lg.image(step, tag, image)

    def text(self, step, tag, text):
        for lg in self.loggers:
            lg.text(step, tag, text)

    def close(self):
        for lg in self.loggers:
            lg.close()


class TensorBoardLogger(Logger):
    """``RUN/tensorboard/`` through torch.utils.tensorboard's SummaryWriter.  A resumed run (``first_step`` > 0)
    purges events logged after its checkpoint (``purge_step``), so the curve has no step twice."""

    def __init__(self, run_dir: Path, first_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"),
                                    purge_step=first_step + 1 if first_step else None)

    def scalars(self, step, values):
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)
        self.writer.flush()

    def image(self, step, tag, image):
        self.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        self.writer.flush()

    def text(self, step, tag, text):
        self.writer.add_text(tag, text, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbLogger(Logger):
    """Weights & Biases into ``RUN/wandb/``; the run id is kept in ``RUN/wandb.json``, so a resumed run continues
    the same W&B run.  ``WANDB_MODE=offline`` (W&B's own setting) logs without an account."""

    def __init__(self, run_dir: Path, config: dict, first_step: int = 0):
        import wandb
        run_dir = Path(run_dir)
        record = run_dir / "wandb.json"
        run_id = json.loads(record.read_text())["id"] if record.is_file() else secrets.token_hex(4)
        if not record.is_file():
            write_json_atomic(record, {"id": run_id})
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(dir=str(run_dir), id=run_id, resume="allow", config=config,
                              project=os.environ.get("WANDB_PROJECT", "ddpm"), name=run_dir.name)
        self.first_step = first_step

    def scalars(self, step, values):
        self.run.log(dict(values), step=step)

    def image(self, step, tag, image):
        self.run.log({tag: self.wandb.Image(np.asarray(image))}, step=step)

    def text(self, step, tag, text):
        self.run.summary[tag] = text

    def close(self):
        self.run.finish()


#: backend name -> (the class, the module it needs, the package extra that installs it)
LOGGERS = {
    "tensorboard": (TensorBoardLogger, "tensorboard", "tensorboard"),
    "wandb": (WandbLogger, "wandb", "wandb"),
}


def check_loggers(names) -> tuple[str, ...]:
    """``names`` (a comma-separated string or a sequence), checked before any work: each a key of :data:`LOGGERS`
    whose package is installed; else :class:`LoggerError` in one line naming the extra."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(dict.fromkeys(names))
    for name in names:
        if name not in LOGGERS:
            raise LoggerError(f"logger {name!r}: not one of {', '.join(LOGGERS)} (metrics.jsonl is always written)")
        module, extra = LOGGERS[name][1], LOGGERS[name][2]
        if importlib.util.find_spec(module) is None:
            raise LoggerError(f"logger {name}: the {module} package is not installed; pip install 'ddpm[{extra}]'")
    return names


def make_loggers(names, run_dir: Path, *, config: dict, first_step: int = 0) -> Loggers:
    """The loggers ``names`` for ``run_dir`` (rank 0 only), the config logged as text at ``first_step``."""
    made = []
    for name in check_loggers(names):
        cls = LOGGERS[name][0]
        made.append(cls(run_dir, first_step) if cls is TensorBoardLogger else cls(run_dir, config, first_step))
    out = Loggers(made)
    out.text(first_step, "config", "```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```")
    return out
