"""Editing images with a trained run: the forward process at one t, SDEdit (``edit``) and RePaint (``inpaint``).

The Python twins of ``ddpm edit`` and ``ddpm inpaint`` and what the web page calls; the maths is in
:mod:`ddpm.core.editing`.  Image k of a call with base seed s draws its noise from its own generator seeded with
:func:`~ddpm.sampling.generate.sample_seed` (s, k), as :func:`~ddpm.sampling.generate.generate` does, so a result
depends on its seed alone, and :func:`noised` with the same seed and t gives exactly the x_t that :func:`edit`
starts from.

Images come in as uint8 (a tensor (N, C, H, W) or (C, H, W), or a NumPy array (N, H, W, C), (H, W, C) or
(H, W)) at the run's size, or at a whole multiple of it (averaged down, e.g. a drawing on a larger canvas).
A picture that does not fit raises :class:`ImageError`, one line saying what was expected.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.diffusion import VARIANCE_TYPES
from ..core.editing import (
    Noised,
    noise_to,
    repaint_calls,
    repaint_sample,
    sdedit_sample,
)
from ..core.samplers import OnStep, PerSampleNoise
from ..data.datasets import EMBEDDED, DataConfig, load_images, to_model_range, to_uint8
from ..data.errors import DataError
from ..data.files import read_picture as data_read_picture
from .config import SamplingConfig
from .generate import LoadedRun, Samples, model_fn, sample_seed, sampling_config
from .variance import ANALYTIC

__all__ = ["ImageError", "INPAINT_DEFAULTS", "MASK_HALVES", "held_out_images", "held_out", "read_picture", "fit_images",
           "fit_mask", "half_mask", "noised", "edit", "inpaint_settings", "inpaint_calls", "inpaint"]

#: RePaint's settings when none are given: 100 respaced steps, jumps of 5 steps, each window denoised 5 times
#: (about 480 network calls; the paper's 250 / 10 / 10 takes 2,260, too slow for a CPU page).
INPAINT_DEFAULTS = {"steps": 100, "jump_length": 5, "resample": 5}

#: the masks :func:`half_mask` names: which half of the image the model paints
MASK_HALVES = ("top", "bottom", "left", "right")


class ImageError(ValueError):
    """A picture or mask that does not fit the run; the message is one line for the user."""


def read_picture(path) -> np.ndarray:
    """A picture file as uint8 (N, H, W, C): :func:`ddpm.data.files.read_picture` (an image: N = 1, C = 1, 3 or 4;
    a .npy/.npz of images), its one-line errors as :class:`ImageError`."""
    try:
        return data_read_picture(path)
    except DataError as e:
        raise ImageError(str(e)) from None


def held_out_images(run: LoadedRun) -> torch.Tensor:
    """The test split of the embedded dataset the run was trained on (see :mod:`ddpm.data.datasets`), at the run's
    size: uint8 (N, C, H, W); :class:`ImageError` for a run trained on a folder or an array file."""
    d, mc = run.config.data, run.config.model
    if d.source not in EMBEDDED:
        raise ImageError(f"the run was trained on {d.source}, which has no held-out split; pass a picture instead")
    return load_images(DataConfig(source=d.source, image_size=mc.image_size, channels=mc.in_channels, split="test"))


def held_out(run: LoadedRun, first: int, last: int | None = None, images: torch.Tensor | None = None) -> torch.Tensor:
    """Held-out images ``first`` .. ``last`` (inclusive; default just ``first``) of :func:`held_out_images` (or of
    ``images``, that split already loaded)."""
    images = held_out_images(run) if images is None else images
    last = first if last is None else last
    if not 0 <= first <= last < len(images):
        raise ImageError(f"held-out images {first}-{last}: the {run.config.data.source} test split has images "
                         f"0-{len(images) - 1}")
    return images[first:last + 1].clone()


def _nhwc(images) -> np.ndarray:
    """uint8 tensor (N, C, H, W) / (C, H, W) or array (N, H, W, C) / (H, W, C) / (H, W) -> array (N, H, W, C)."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise ImageError(f"image tensors must be uint8 (N, C, H, W) or (C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = images.detach().cpu()
        return (x[None] if x.ndim == 3 else x).permute(0, 2, 3, 1).numpy()
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ImageError(f"images must be uint8 (0..255), got {a.dtype}")
    if a.ndim == 2:
        return a[None, ..., None]
    if a.ndim == 3:
        if a.shape[-1] not in (1, 3, 4):
            raise ImageError(f"a single image (H, W, C) needs C = 1, 3 or 4, got shape {a.shape}")
        return a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ImageError(f"images must be (N, H, W, C) with C = 1, 3 or 4, got shape {a.shape}")
    return a


def _shrink(a: np.ndarray, size: int, what: str) -> np.ndarray:
    """(N, H, W, C) float at size x size, or at k size x k size averaged over k x k blocks."""
    n, h, w, c = a.shape
    if h == w == size:
        return a
    if h != w or h % size:
        raise ImageError(f"{what} is {w}x{h}; the run makes {size}x{size} images: pass {size}x{size} "
                         f"(or a whole multiple such as {8 * size}x{8 * size})")
    k = h // size
    return a.reshape(n, size, k, size, k, c).mean(axis=(2, 4))


def fit_images(images, channels: int, size: int, what: str = "the image") -> torch.Tensor:
    """Pictures as the run takes them: uint8 (N, channels, size, size).

    Transparent pixels are laid on black (the digits' background); a grey run takes RGB pictures whose
    channels agree (within 2 levels) and refuses colour; an RGB run repeats a grey channel.  A whole multiple
    of the size is averaged down; any other size is refused (:class:`ImageError`)."""
    a = _nhwc(images).astype(np.float64)
    if len(a) == 0:
        raise ImageError(f"{what}: no images")
    if a.shape[-1] == 4:
        a = a[..., :3] * (a[..., 3:] / 255.0)
    if a.shape[-1] == 3 and channels == 1:
        if np.abs(a - a.mean(axis=-1, keepdims=True)).max() > 2:
            raise ImageError(f"{what} is in colour; the run makes grey images: pass a greyscale picture")
        a = a.mean(axis=-1, keepdims=True)
    elif a.shape[-1] == 1 and channels == 3:
        a = np.repeat(a, 3, axis=-1)
    a = _shrink(a, size, what)
    return torch.from_numpy(np.rint(a).clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def fit_mask(mask, size: int, what: str = "the mask") -> torch.Tensor:
    """A mask as :func:`inpaint` takes it: bool (N, 1, size, size), True where the model paints.

    ``mask``: a bool tensor or array of that shape (or (size, size)), or a uint8 picture as for :func:`fit_images`
    where white marks the pixels to paint (any colour channel above 127, and opaque if it has alpha).  At a
    whole multiple of the size a pixel is painted when any part of its block is."""
    if isinstance(mask, (torch.Tensor, np.ndarray)) and mask.dtype in (torch.bool, np.bool_):
        m = torch.as_tensor(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask))
        m = m.reshape(1, 1, *m.shape) if m.ndim == 2 else m
        if m.ndim != 4 or m.shape[1] != 1 or tuple(m.shape[2:]) != (size, size):
            raise ImageError(f"{what} has shape {tuple(m.shape)}; pass (N, 1, {size}, {size}) or ({size}, {size})")
        return m.clone()
    a = _nhwc(mask)
    painted = (a[..., :3].max(axis=-1) > 127) if a.shape[-1] != 1 else a[..., 0] > 127
    if a.shape[-1] == 4:
        painted &= a[..., 3] > 127
    p = _shrink(painted[..., None].astype(np.float64), size, what) > 0
    return torch.from_numpy(np.ascontiguousarray(p)).permute(0, 3, 1, 2).contiguous()


def half_mask(which: str, size: int) -> torch.Tensor:
    """bool (1, 1, size, size): True on the named half (:data:`MASK_HALVES`), the half the model paints."""
    if which not in MASK_HALVES:
        raise ImageError(f"mask {which!r}: name one of {', '.join(MASK_HALVES)}, or pass a mask picture")
    m = torch.zeros(1, 1, size, size, dtype=torch.bool)
    half = size // 2
    region = {"top": (slice(None, half), slice(None)), "bottom": (slice(half, None), slice(None)),
              "left": (slice(None), slice(None, half)), "right": (slice(None), slice(half, None))}[which]
    m[(0, 0, *region)] = True
    return m


def _run_images(run: LoadedRun, images) -> torch.Tensor:
    mc = run.config.model
    return fit_images(images, mc.in_channels, mc.image_size)


def _noise(run: LoadedRun, seed: int, start: int, stop: int) -> PerSampleNoise:
    return PerSampleNoise([sample_seed(seed, k) for k in range(start, stop)], run.device)


def noised(run: LoadedRun, images, t: int, *, seed: int = 0) -> Noised:
    """The forward process at the paper's time t (0..T): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4 of
    Ho et al. 2020), with abar_t and the signal-to-noise ratio abar_t / (1 - abar_t).  ``x`` is float
    (N, C, H, W) in the model's units (x_0 in [-1, 1]; x_t spreads wider), on the CPU.  eps is the first draw of
    image k's generator (seed ``sample_seed(seed, k)``), the one :func:`edit` starts from."""
    x0 = to_model_range(_run_images(run, images))
    eps = _noise(run, seed, 0, len(x0)).randn(tuple(x0.shape[1:])).cpu()
    return noise_to(run.schedule, x0, t, eps)


def _batches(n: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def edit(run: LoadedRun, images, t: int, sampling: SamplingConfig | None = None, *, seed: int = 0,
         batch_size: int = 64, precision: str = "auto", progress: bool = False, on_step: OnStep | None = None,
         **settings) -> Samples:
    """SDEdit (Meng et al. 2022): noise each image to the paper's time t with eq. 4 and run the reverse process
    back to x_0 as ``sampling`` says (a :class:`~ddpm.sampling.config.SamplingConfig`, or its fields as keywords:
    the sampler, ``steps`` network calls, at most t, default all t; eta; a variance type, default the run's own).
    The larger t, the more of the image the model redraws; t = 0 returns the images as they are.  Deterministic
    for a fixed ``seed``.  Returns :class:`~ddpm.sampling.generate.Samples` (uint8 images).  ``on_step``: every
    batch's steps, as for :func:`~ddpm.sampling.generate.generate`."""
    sampling = sampling_config(sampling, **settings)
    if sampling.variance == ANALYTIC:
        raise ValueError("variance analytic is estimated for drawing from noise; SDEdit takes a variance type "
                         f"({', '.join(VARIANCE_TYPES)}) or the run's own")
    x0 = to_model_range(_run_images(run, images))
    f = model_fn(run.model, run.device, precision)
    out = []
    for start, stop in _batches(len(x0), batch_size):
        x = sdedit_sample(lambda x, t: f(x, t, None), run.schedule, x0[start:stop], t,
                          _noise(run, seed, start, stop), sampler=sampling.sampler, steps=sampling.steps,
                          eta=sampling.eta, variance=sampling.variance or run.config.variance,
                          clip_denoised=sampling.clip_denoised, progress=progress, on_step=on_step)
        out.append(to_uint8(x.clamp(-1, 1)).cpu())
    return Samples(torch.cat(out))


def inpaint_settings(num_timesteps: int, steps: int | None = None, jump_length: int | None = None,
                     resample: int | None = None) -> dict:
    """RePaint's settings with every ``None`` filled from :data:`INPAINT_DEFAULTS`, fitted to a run of T =
    ``num_timesteps``: steps at most T, and a default jump length below the steps (no resampling with 1 step)."""
    d = INPAINT_DEFAULTS
    steps = min(d["steps"], num_timesteps) if steps is None else steps
    if jump_length is None:
        jump_length = min(d["jump_length"], max(1, steps - 1))
    if resample is None:
        resample = d["resample"] if steps > 1 else 1
    return {"steps": steps, "jump_length": jump_length, "resample": resample}


def inpaint_calls(num_timesteps: int, steps: int | None = None, jump_length: int | None = None,
                  resample: int | None = None) -> int:
    """Network calls of one :func:`inpaint` batch (see :func:`inpaint_settings` for the ``None`` s)."""
    return repaint_calls(**inpaint_settings(num_timesteps, steps, jump_length, resample))


def inpaint(run: LoadedRun, images, mask, sampling: SamplingConfig | None = None, *, seed: int = 0,
            steps: int | None = None, jump_length: int | None = None, resample: int | None = None,
            batch_size: int = 64, precision: str = "auto", on_step: OnStep | None = None, **settings) -> Samples:
    """RePaint (Lugmayr et al. 2022): fill the pixels ``mask`` marks from the model, keeping the others.

    mask: True (or white) where the model paints; one mask (H, W) / (1, 1, H, W) for all images or one per
    image (N, 1, H, W); see :func:`fit_mask`.  steps: levels of the respaced schedule; jump_length and
    resample: RePaint's j and r (``resample=1`` is plain replacement); ``None`` takes :data:`INPAINT_DEFAULTS`
    (fitted to the run by :func:`inpaint_settings`).  ``sampling`` (or its fields as keywords): the spacing of the
    steps (default uniform), a variance type (default the run's own) and the clipping; RePaint is Algorithm 2, so
    the sampler is ddpm.  Pixels outside the mask come back exactly as given.  Deterministic for a fixed ``seed``.
    Returns :class:`~ddpm.sampling.generate.Samples` (uint8 images)."""
    sampling = sampling_config(sampling, **settings)
    if sampling.sampler != "ddpm" or sampling.variance == ANALYTIC:
        raise ValueError(f"sampler={sampling.sampler}, variance={sampling.variance}: RePaint runs Algorithm 2 with a "
                         f"variance type ({', '.join(VARIANCE_TYPES)}) or the run's own")
    settings = inpaint_settings(run.schedule.num_timesteps, steps, jump_length, resample)
    steps, jump_length, resample = settings["steps"], settings["jump_length"], settings["resample"]
    if not 1 <= steps <= run.schedule.num_timesteps:
        raise ValueError(f"steps must lie in [1, {run.schedule.num_timesteps}] (the run's T), got {steps}")
    repaint_calls(steps, jump_length, resample)  # refuse a bad jump length or resample count before any work
    known = _run_images(run, images)
    m = fit_mask(mask, run.config.model.image_size)
    if len(m) not in (1, len(known)):
        raise ImageError(f"{len(m)} masks for {len(known)} images; pass one mask, or one per image")
    if not m.any():
        raise ImageError("the mask is empty: mark the pixels to paint (white)")
    m = m.expand(len(known), *m.shape[1:])
    x0 = to_model_range(known)
    f = model_fn(run.model, run.device, precision)
    out = []
    for start, stop in _batches(len(x0), batch_size):
        x = repaint_sample(f, run.schedule, x0[start:stop], m[start:stop], _noise(run, seed, start, stop),
                           steps=steps, spacing=sampling.spacing or "uniform", jump_length=jump_length,
                           resample=resample, variance=sampling.variance or run.config.variance,
                           clip_denoised=sampling.clip_denoised, on_step=on_step)
        out.append(to_uint8(x.clamp(-1, 1)).cpu())
    return Samples(torch.cat(out))
