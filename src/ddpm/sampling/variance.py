"""Analytic-DPM's reverse variances for a loaded run (Bao et al. 2022; the maths is :mod:`ddpm.core.analytic`).

Gamma_k, the mean squared norm of the network's noise prediction at each kept step, is a Monte Carlo average over
training images of the run's own data, noised with a fixed seed, so the variances of a run are the same on every
call and every machine that reads the same data.  They are computed once per loaded run and set of steps.

A class-conditional run samples with the prediction its sampler uses: each training image's own label, and the
guidance weight of the call (:func:`ddpm.core.guidance.guided_model`), since the conditional prediction is a
different (better) network than the run's "no class" one, with a different Gamma.
"""
from __future__ import annotations

import torch

from ..core.analytic import analytic_variances, eps_norm_ratio
from ..core.guidance import guided_model
from ..core.respace import respace
from ..core.schedule import Schedule
from ..data.datasets import DataError, load_images, to_model_range
from ..data.labels import load_labels

__all__ = ["ANALYTIC", "ANALYTIC_IMAGES", "analytic_sigma2"]

#: the name of the variance choice, beside the training variance types (sampling only)
ANALYTIC = "analytic"
#: training images in the Monte Carlo estimate of Gamma_k; the per-image ||eps||^2 / d of a digit varies by a few per
#: cent, so 64 images put Gamma within about 0.005 (one standard error)
ANALYTIC_IMAGES = 64
_SEED = 20220127  # the noise of the estimate, fixed


def analytic_sigma2(run, timesteps: torch.Tensor, model=None, images: int = ANALYTIC_IMAGES,
                    guide: tuple[float, tuple[int, int] | None] | None = None) -> torch.Tensor:
    """sigma*_k^2 of every step of Algorithm 2 over ``timesteps`` (0-based, increasing) for ``run`` (a
    :class:`~ddpm.sampling.generate.LoadedRun`), float64; ``model``: its network as ``f(x, t, y=None)`` (default:
    the run's own).  ``guide``: for a class-conditional run sampled with labels, (w, interval) of the guidance
    (interval 0-based, or None): Gamma is then that of the guided prediction with each image's own label; None:
    the network called without labels.  Cached on ``run``.  Raises :class:`~ddpm.data.datasets.DataError` when
    the run's training data (or, with ``guide``, its labels) cannot be read."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    key = ("analytic", tuple(timesteps.tolist()), images, guide)
    cache = run.cache
    if key not in cache:
        x0, pick = _training_images(run, images)
        f = model if model is not None else run.model
        if guide is not None:
            w, interval = guide
            cfg = run.config.model
            f = guided_model(f, _training_labels(run, pick), w, null_label=cfg.num_classes,
                             eps_channels=cfg.in_channels, interval=interval)
        # one batch of all the images, so that the labels line up with them
        gamma = eps_norm_ratio(f, run.schedule, timesteps, x0, torch.Generator().manual_seed(_SEED),
                               batch_size=len(x0))
        reverse: Schedule = respace(run.schedule, timesteps)
        cache[key] = analytic_variances(reverse, gamma)
    return cache[key]


def _training_images(run, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the ``n`` images of the estimate in the model's range on the run's device, their indices in the data)."""
    try:
        data = load_images(run.config.data)
    except (DataError, OSError) as e:
        raise DataError(f"the analytic variance estimates Gamma_t from the run's training data, which cannot be read "
                        f"({e}); sample with --variance fixed-large instead") from None
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(_SEED))[:n]
    return to_model_range(data[pick], run.device), pick


def _training_labels(run, pick: torch.Tensor) -> torch.Tensor:
    """The class labels of the training images ``pick`` (the run's own classes)."""
    try:
        labels, _ = load_labels(run.config.data)
    except (DataError, OSError) as e:
        raise DataError(f"the analytic variance of a class-conditional run estimates Gamma_t from the training "
                        f"images' labels, which cannot be read ({e}); sample with --variance fixed-large "
                        "instead") from None
    return labels[pick].to(run.device)
