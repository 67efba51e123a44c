"""The analytic variance's estimates a run stores when training ends (:mod:`ddpm.sampling.variance`): those of the
draws :class:`~ddpm.sampling.config.SamplingConfig`'s defaults make, so that drawing with the defaults needs no
training data."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..core.samplers import ancestral_timesteps
from ..data.datasets import DataError
from ..runs.checkpoint import ANALYTIC_FILE
from .config import SamplingConfig
from .generate import load_run, model_fn
from .variance import ANALYTIC, ANALYTIC_IMAGES, analytic_gammas

__all__ = ["default_settings", "store_default_estimates"]


def default_settings(run) -> list[tuple[torch.Tensor, tuple[float, tuple[int, int] | None] | None]]:
    """(timesteps, guide) of every default draw of ``run`` (``SamplingConfig().for_run(run)``, with the analytic
    variance): the network without labels for an unconditional run; for a class-conditional one, every class in
    turn (its default w, 0) and a class asked for (its default w, 1)."""
    default = SamplingConfig(variance=ANALYTIC)
    if run.config.class_names is None:
        drawn = [(default.for_run(run, note=lambda _: None), None)]
    else:
        drawn = [(c, (c.guidance, None)) for c in (default.for_run(run, classes_asked=asked, note=lambda _: None)
                                                    for asked in (False, True))]
    return [(ancestral_timesteps(run.schedule, c.steps, c.spacing), guide) for c, guide in drawn]


def store_default_estimates(ckpt, device: str = "cpu") -> Path | None:
    """Estimate and store (``ckpt/analytic.json``) Gamma of every default draw (:func:`default_settings`) of the EMA
    weights of checkpoint folder ``ckpt``, with the network in float32 on ``device``; returns the file, or None
    with a warning when the training data cannot be read (sampling then estimates where it can)."""
    run = load_run(ckpt, "ema", str(device))
    f = model_fn(run.model, run.device, "fp32")
    groups: dict[tuple[int, ...], list] = {}
    for timesteps, guide in default_settings(run):
        groups.setdefault(tuple(timesteps.tolist()), []).append(guide)
    try:
        for timesteps, guides in groups.items():  # the guides share the network's passes
            analytic_gammas(run, timesteps, f, ANALYTIC_IMAGES, guides)
    except DataError as e:
        warnings.warn(f"{ckpt}: no analytic-variance estimate stored ({e})", stacklevel=2)
        return None
    return Path(run.checkpoint) / ANALYTIC_FILE
