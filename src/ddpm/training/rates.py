"""The schedules of the optimisation itself (not of the noise): the learning rate and the EMA decay per step."""
from __future__ import annotations

import math

__all__ = ["lr_at", "ema_decay_at"]


def ema_decay_at(step: int, max_decay: float) -> float:
    """EMA decay with warm-up, min(max_decay, (1 + n) / (10 + n)), so short runs still get a useful average."""
    return min(max_decay, (1 + step) / (10 + step))


def lr_at(step: int, lr: float, warmup_steps: int, schedule: str = "constant", total_steps: int | None = None) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up over ``warmup_steps``, then
    ``schedule``: "constant" (the paper's CIFAR-10 recipe) or "cosine", lr (1 + cos(pi p)) / 2 with p the
    fraction of the post-warm-up steps done, reaching 0 at ``total_steps`` (short runs end on averaged,
    low-noise weights instead of the last noisy step of a constant rate)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if total_steps is None:
        raise ValueError("the cosine schedule needs total_steps")
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * 0.5 * (1.0 + math.cos(math.pi * p))
