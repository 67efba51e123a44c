"""Analytic-DPM's reverse variances for a loaded run (Bao et al. 2022; the maths is :mod:`ddpm.core.analytic`).

Gamma_t, the mean squared norm of the network's noise prediction at step t (eq. 4 noising, 0-based t), is a Monte
Carlo average over ``images`` training images of the run's own data, picked and noised with a fixed seed (the noise
of step t from its own generator, seeded ``seed + t``, so Gamma_t does not depend on which other steps are kept).

The estimates are stored beside the weights they belong to, ``checkpoints/step_N/analytic.json``
(:func:`ddpm.runs.checkpoint.read_analytic`), per weights set, way of calling the network and timestep: training
writes those of the default draws (:func:`ddpm.sampling.stored.store_default_estimates`) with its last checkpoint,
so sampling with the defaults needs no training data and draws the same images on every machine, and from a run
exported and imported again.  A stored Gamma_t is always used before a new estimate; a step not stored is
estimated where the data can be read and added to the store where the folder is writable (an older run folder gains
its store the first time it is drawn from).  A damaged store is estimated again where the data is at hand (with a
warning), else refused.

A class-conditional run samples with the prediction its sampler uses: each training image's own label, and the
guidance weight of the call (:func:`ddpm.core.guidance.guidance_combine`, mixed as
:func:`~ddpm.core.guidance.guided_model` mixes it), since the conditional prediction is a
different (better) network than the run's "no class" one, with a different Gamma.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..core.analytic import analytic_variances
from ..core.guidance import guidance_combine
from ..core.respace import respace
from ..data.datasets import EMBEDDED, DataError, load_images, to_model_range
from ..data.labels import load_labels
from ..runs.checkpoint import CheckpointError, read_analytic, write_analytic
from ..runs.diffusers_io import UNKNOWN_DATA

__all__ = ["ANALYTIC", "ANALYTIC_IMAGES", "ANALYTIC_SEED", "analytic_sigma2", "analytic_gammas", "data_readable",
           "has_stored_estimate"]

#: the name of the variance choice, beside the training variance types (sampling only)
ANALYTIC = "analytic"
#: training images in the Monte Carlo estimate of Gamma_k; the per-image ||eps||^2 / d of a digit varies by a few per
#: cent, so 64 images put Gamma within about 0.005 (one standard error)
ANALYTIC_IMAGES = 64
#: the seed of the estimate: which training images (a permutation drawn with it) and their noise (step t: seed + t)
ANALYTIC_SEED = 20220127


def analytic_sigma2(run, timesteps: torch.Tensor, model=None, images: int = ANALYTIC_IMAGES,
                    guide: tuple[float, tuple[int, int] | None] | None = None) -> torch.Tensor:
    """sigma*_k^2 of every step of Algorithm 2 over ``timesteps`` (0-based, increasing) for ``run`` (a
    :class:`~ddpm.sampling.generate.LoadedRun`), float64; ``model``: its network as ``f(x, t, y=None)`` (default:
    the run's own), for the steps not stored yet.  ``guide``: for a class-conditional run sampled with labels,
    (w, interval) of the guidance (interval 0-based, or None): Gamma is then that of the guided prediction with each
    image's own label; None: the network called without labels.  Gamma_t comes from the checkpoint's store, else is
    estimated and stored (see the module's notes).  Cached on ``run``.  Raises
    :class:`~ddpm.data.datasets.DataError` when a step is not stored and the run's training data (or, with
    ``guide``, its labels) cannot be read, and :class:`~ddpm.runs.checkpoint.CheckpointError` for a damaged store
    without the data to estimate again from."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    key = ("analytic", tuple(timesteps.tolist()), images, guide)
    cache = run.cache
    if key not in cache:
        gamma = analytic_gammas(run, key[1], model, images, [guide])[0]
        cache[key] = analytic_variances(respace(run.schedule, timesteps), torch.tensor(gamma, dtype=torch.float64))
    return cache[key]


def _checkpoint(run) -> Path | None:
    ckpt = getattr(run, "checkpoint", None)
    return Path(ckpt) if ckpt is not None else None


def _guidance(guide) -> dict | None:
    """``guide`` as the store writes it."""
    if guide is None:
        return None
    w, interval = guide
    return {"w": float(w), "interval": None if interval is None else [int(interval[0]), int(interval[1])]}


def _matches(entry: dict, run, images: int, guide) -> bool:
    return (entry["weights"] == getattr(run, "weights", "ema") and entry["images"] == images
            and entry["seed"] == ANALYTIC_SEED and entry["guidance"] == _guidance(guide))


def _stored(run) -> list[dict]:
    """The checkpoint's stored estimates; a damaged store is [] (with a warning) where the data can be read to
    estimate again, else refused in one line."""
    ckpt = _checkpoint(run)
    if ckpt is None:
        return []
    try:
        return read_analytic(ckpt)
    except CheckpointError as e:
        if not data_readable(run):
            raise CheckpointError(f"{e}; the training data ({run.config.data.source}) is not here to estimate "
                                  "Gamma again from: restore the file, or sample with --variance fixed-large") from None
        warnings.warn(f"{e}; estimating Gamma again from the training data, stored anew", stacklevel=3)
        return []


def analytic_gammas(run, timesteps, model=None, images: int = ANALYTIC_IMAGES, guides: list = (None,)
                    ) -> list[list[float]]:
    """Gamma_t for each of ``timesteps`` (0-based) and each of ``guides`` (as ``guide`` of :func:`analytic_sigma2`):
    the stored values, and the others estimated (in one sweep that shares the network's passes between the guides)
    and added to the store."""
    timesteps = [int(t) for t in torch.as_tensor(timesteps).tolist()]
    estimates = _stored(run)
    entries = []
    for guide in guides:
        entry = next((e for e in estimates if _matches(e, run, images, guide)), None)
        if entry is None:
            entry = {"weights": getattr(run, "weights", "ema"), "guidance": _guidance(guide), "images": images,
                     "seed": ANALYTIC_SEED, "gamma": {}}
            estimates.append(entry)
        entries.append(entry)
    missing = sorted({t for t in timesteps for e in entries if str(t) not in e["gamma"]})
    if missing:
        for entry, fresh in zip(entries, _estimate(run, missing, model, images, guides)):
            for t, g in fresh.items():
                entry["gamma"].setdefault(t, g)  # a stored value stays
        ckpt = _checkpoint(run)
        if ckpt is not None and ckpt.is_dir():
            try:
                write_analytic(ckpt, estimates)
            except OSError:  # a read-only folder: the estimate serves this load only
                pass
    return [[e["gamma"][str(t)] for t in timesteps] for e in entries]


@torch.inference_mode()
def _estimate(run, timesteps: list[int], model, images: int, guides: list) -> list[dict[str, float]]:
    """A fresh Monte Carlo Gamma_t = mean ||eps~(x_t, t)||^2 / d for each of ``guides`` at each of ``timesteps``:
    x_t ~ q(x_t | x_0) (eq. 4) of the ``images`` training images, the noise of step t from its own generator
    (seed + t), through the network once per way of calling it the guides need (with each image's label, "no
    class", or without labels) and mixed as the sampler mixes them (:func:`ddpm.core.guidance.guidance_combine`)."""
    x0, pick = _training_images(run, images)
    f = model if model is not None else run.model
    labels = _training_labels(run, pick) if any(g is not None for g in guides) else None
    out = [{} for _ in guides]
    for t in timesteps:
        abar = float(run.schedule.alpha_bars[t])
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(ANALYTIC_SEED + t)).to(x0.device)
        x_t = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps
        t_batch = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
        passes = {}

        def call(y: str) -> torch.Tensor:
            if y not in passes:
                given = {"none": None, "own": labels,
                         "null": None if labels is None else torch.full_like(labels, run.config.model.num_classes)}[y]
                passes[y] = (f(x_t, t_batch) if given is None else f(x_t, t_batch, given)).float()[:, :x0.shape[1]]
            return passes[y]
        for guide, gamma in zip(guides, out):
            if guide is None:
                pred = call("none")
            else:
                w, interval = guide
                guided = w != 0 and (interval is None or interval[0] <= t <= interval[1])
                pred = guidance_combine(call("own"), call("null"), w) if guided else call("own")
            gamma[str(t)] = float(pred.double().pow(2).flatten(1).mean(1).mean())
    return out


def data_readable(run) -> bool:
    """Whether the training data of ``run`` is at hand to estimate Gamma from (embedded, or a path that exists)."""
    source = run.config.data.source
    return source in EMBEDDED or (source != UNKNOWN_DATA and Path(source).exists())


def has_stored_estimate(run) -> bool:
    """Whether the checkpoint of ``run`` stores an estimate for its weights set (a damaged store counts: drawing
    from it then estimates again or is refused, never falls back unsaid)."""
    ckpt = _checkpoint(run)
    if ckpt is None:
        return False
    try:
        return any(e["weights"] == getattr(run, "weights", "ema") for e in read_analytic(ckpt))
    except CheckpointError:
        return True


def _training_images(run, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the ``n`` images of the estimate in the model's range on the run's device, their indices in the data)."""
    try:
        data = load_images(run.config.data)
    except (DataError, OSError) as e:
        raise DataError(f"the analytic variance estimates Gamma_t from the run's training data, which cannot be read "
                        f"({e}); sample with --variance fixed-large instead") from None
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(ANALYTIC_SEED))[:n]
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
