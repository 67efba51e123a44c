"""The training log: a metrics row every ``log_every`` steps (``metrics.jsonl``: step, loss, lr, grad_norm, img/s,
ema_decay; the same as ``train/*`` scalars to the loggers of :mod:`.loggers`), the progress bar, and the stop when the
loss stops being finite.  Only rank 0 writes; every rank averages."""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..runtime import distributed
from .loggers import Logger

__all__ = ["TrainingLog", "TRAIN_SCALARS"]

#: the columns of a metrics row that go to the loggers, as ``train/NAME``
TRAIN_SCALARS = ("loss", "lr", "grad_norm", "img_per_s", "ema_decay")


class TrainingLog:
    """Collects the losses of one log interval and writes their mean (over steps and ranks) as a row.

    img/s counts training time only: time spent inside :meth:`paused` (previews, checkpoints) is skipped."""

    def __init__(self, run_dir: Path, *, world: distributed.World, steps: int, first_step: int, log_every: int,
                 global_batch_size: int, device: torch.device, progress: bool, desc: str = "training",
                 loggers: Logger | None = None):
        self.world, self.steps, self.log_every, self.global_batch_size = world, steps, log_every, global_batch_size
        self.loggers = loggers if loggers is not None else Logger()
        self.metrics = (Path(run_dir) / "metrics.jsonl").open("a") if world.is_main else None
        self.bar = tqdm(total=steps, initial=first_step, desc=desc, unit="step", dynamic_ncols=True) \
            if world.is_main and progress else None
        self.loss_sum = torch.zeros((), device=device)
        self.n, self.images, self.t_last = 0, 0, time.perf_counter()

    def after_step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float,
                   ema_decay: float | None = None) -> None:
        """Add one optimisation step; at the end of an interval (and at the last step) write its row.  Collective
        when distributed (one all-reduce per interval); raises FloatingPointError when the mean loss is not finite."""
        self.loss_sum += loss
        self.n += 1
        self.images += self.global_batch_size
        if self.bar is not None:
            self.bar.update(1)
        if step % self.log_every and step != self.steps:
            return
        now = time.perf_counter()
        mean_loss = distributed.mean_over_ranks(self.loss_sum / self.n, self.world).item()
        if not math.isfinite(mean_loss):  # every rank sees the same mean, so all stop together
            raise FloatingPointError(f"loss became {mean_loss} at step {step}; lower --lr")
        row = {"step": step, "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
               "img_per_s": self.images / max(now - self.t_last, 1e-9), "world_size": self.world.world_size,
               "global_batch_size": self.global_batch_size, "time": time.time()}
        if ema_decay is not None:
            row["ema_decay"] = ema_decay
        if self.metrics is not None:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
            self.loggers.scalars(step, {f"train/{k}": row[k] for k in TRAIN_SCALARS if k in row})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{row['img_per_s']:.0f}")
        self.loss_sum.zero_()
        self.n, self.images, self.t_last = 0, 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count towards img/s (the interval's clock moves forward by as much)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t_last += time.perf_counter() - start

    def close(self) -> None:
        self.loggers.close()
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
