"""Starting a run from another run's weights (``ddpm train --init-from``): fine-tuning a trained or imported network
on other images.

The new run's network is the source's (its config, so that the weights fit); its model and its EMA both start from
the source's EMA weights, the ones ``ddpm sample`` draws from (an imported run's only weights).  Everything else,
the optimizer state, the data order and the step count, starts afresh: step 0, the new run's own seed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..runs.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    mismatch_summary,
)
from ..runs.config import TrainConfig

__all__ = ["source_config", "load_initial_weights"]


def source_config(source) -> tuple[Path, TrainConfig]:
    """(checkpoint folder, run config) of the run or checkpoint folder ``source``; a one-line
    :class:`CheckpointError` when there is none or its config is not a ddpm one."""
    ckpt = latest_checkpoint(source)
    ck = load_checkpoint(ckpt, with_trainer_state=False)
    try:
        return ckpt, TrainConfig.from_dict(ck["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt / 'config.json'}: not a valid ddpm config ({e})") from None


def load_initial_weights(model: torch.nn.Module, source) -> Path:
    """Load the EMA weights of the run or checkpoint folder ``source`` into ``model``; returns the checkpoint folder.
    Weights that do not fit the network (another architecture) or hold NaN or Inf are a :class:`CheckpointError`."""
    ck = load_checkpoint(source, with_trainer_state=False)
    try:
        model.load_state_dict(ck["ema"])
    except RuntimeError as e:
        raise CheckpointError(f"init_from {ck['path']}: its weights do not fit this run's network "
                              f"({mismatch_summary(e)}); a run started from them keeps their network") from None
    return ck["path"]
