"""Quality while training, the trainer's half of the seam: every ``eval_every`` steps the trainer hands its EMA
weights, as a :class:`~ddpm.sampling.generate.LoadedRun`, to an evaluator it was given (the CLI builds one with
:func:`ddpm.evaluation.tracking.make_evaluator`; training never imports the evaluation layer) and logs the row.

An evaluator returns ``{"metrics": {"fd": ..., ...}, ...}`` plus what it wants recorded (extractor, weights'
sha256, n, seed, sampling).  The row goes to ``RUN/eval.jsonl`` with the step and the seconds it took, and its
metrics to the loggers as ``eval/NAME``; the time is not counted in img/s (the trainer calls this while the
training log is paused)."""
from __future__ import annotations

import json
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..sampling.generate import LoadedRun
from .loggers import Logger

__all__ = ["Evaluator", "evaluate_now"]

#: run (a LoadedRun of the EMA weights) -> {"metrics": {name: number}, other recorded fields}
Evaluator = Callable[[LoadedRun], dict]


def evaluate_now(trainer, loggers: Logger) -> float:
    """Run ``trainer.evaluator`` on the EMA weights at ``trainer.step``; write and log its row; return its FD."""
    run = LoadedRun(trainer.ema, trainer.schedule, trainer.config, trainer.run_dir, trainer.device)
    start = time.perf_counter()
    rng = torch.get_rng_state()  # sampling must not move the training's dropout stream
    try:
        result = trainer.evaluator(run)
    finally:
        torch.set_rng_state(rng)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in result["metrics"].items()}
    row = {"step": trainer.step, **metrics, **{k: v for k, v in result.items() if k != "metrics"},
           "seconds": seconds, "time": time.time()}
    with (trainer.run_dir / "eval.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    loggers.scalars(trainer.step, {**{f"eval/{k}": v for k, v in metrics.items()}, "eval/seconds": seconds})
    if trainer.config.progress:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        tqdm.write(f"step {trainer.step}: {shown} ({result.get('n', '?')} samples, {seconds:.1f} s)")
    return metrics["fd"]
