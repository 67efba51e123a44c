"""Sampling tied to a given image: the forward process at one t, SDEdit and RePaint.

* :func:`noise_to`       x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4), with abar_t and
  the signal-to-noise ratio abar_t / (1 - abar_t): the notes' stage 1 at one t.
* :func:`sdedit_sample`  SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic
  differential equations", Sec. 3): noise the image to t with eq. 4 and run the reverse process from t down to
  x_0.  The larger t, the less of the image survives.
* :func:`repaint_sample` RePaint (Lugmayr et al. 2022, "RePaint: inpainting using denoising diffusion
  probabilistic models", Algorithm 1 with the jumps of Sec. 4.2): the known pixels are the image re-noised to
  each step's level, the unknown ones come from the model, and every ``jump_length`` steps the whole image is
  noised back up ``jump_length`` steps and denoised again (``resample`` passes in all), which lets the model
  harmonise what it drew with what is known.  ``resample=1`` is plain replacement.

Times here are the paper's: t in 0..T, t = 0 being the image itself (code index t - 1, see
:mod:`ddpm.core.schedule`).  Like the samplers, these functions take ``model(x_t, t)`` (0-based t), draw
their randomness from a :class:`~ddpm.core.samplers.PerSampleNoise` (sample k depends on its own seed
only), never change an input in place, and report to ``on_step`` (a :class:`~ddpm.core.samplers.Step`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from .diffusion import VARIANCE_TYPES, p_mean_variance
from .respace import SPACINGS, original_time_model, respace, timestep_sequence
from .samplers import ModelFn, OnStep, PerSampleNoise, Step, run_sampler
from .schedule import Schedule

__all__ = ["Noised", "alpha_bar", "noise_to", "sdedit_timesteps", "sdedit_sample", "repaint_schedule",
           "repaint_calls", "repaint_sample"]


class Noised(NamedTuple):
    """x_t of :func:`noise_to`, with abar_t and the signal-to-noise ratio SNR(t) = abar_t / (1 - abar_t)
    (inf at t = 0)."""

    x: torch.Tensor
    abar: float
    snr: float


def _check_t(schedule: Schedule, t: int) -> int:
    T = schedule.num_timesteps
    if isinstance(t, bool) or int(t) != t or not 0 <= int(t) <= T:
        raise ValueError(f"t must be a whole number in [0, T={T}] (0 is the image itself), got {t}")
    return int(t)


def alpha_bar(schedule: Schedule, t: int) -> float:
    """abar_t = prod_{s <= t} (1 - beta_s) at the paper's time t (eq. 4); abar_0 = 1."""
    t = _check_t(schedule, t)
    return 1.0 if t == 0 else float(schedule.alpha_bars[t - 1])


def noise_to(schedule: Schedule, x0: torch.Tensor, t: int, eps: torch.Tensor) -> Noised:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), computed in float64 coefficients; ``eps`` ~ N(0, I)
    is passed in.  t = 0 returns x_0 itself (a copy)."""
    abar = alpha_bar(schedule, t)
    if eps.shape != x0.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)}, x0 {tuple(x0.shape)}; they must match")
    x = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * eps
    return Noised(x, abar, math.inf if abar == 1.0 else abar / (1.0 - abar))


def sdedit_timesteps(schedule: Schedule, t: int, steps: int | None = None) -> torch.Tensor:
    """The 0-based indices SDEdit's reverse process visits from time t: ``steps`` of the first t indices, spaced
    as "trailing" (:mod:`ddpm.core.respace`) so that the first is always t - 1, where x_t sits; all t of them
    when ``steps`` is None or >= t."""
    t = _check_t(schedule, t)
    if t == 0:
        return torch.zeros(0, dtype=torch.long)
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps is None or steps >= t:
        return torch.arange(t)
    return timestep_sequence(respace(schedule, torch.arange(t)), steps, "trailing")


def _at_original_times(on_step: OnStep | None, timesteps: torch.Tensor) -> OnStep | None:
    """Report a sampler running on ``respace(schedule, timesteps)`` in the original schedule's times."""
    if on_step is None:
        return None
    paper = [0] + [int(i) + 1 for i in timesteps]

    def report(step: Step) -> None:
        on_step(Step(step.left, paper[step.t], step.x, step.x0))
    return report


@torch.inference_mode()
def sdedit_sample(model: ModelFn, schedule: Schedule, x0: torch.Tensor, t: int, noise: PerSampleNoise, *,
                  sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0, variance: str = "fixed-large",
                  clip_denoised: bool = True, progress: bool = False, on_step: OnStep | None = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Sec. 3) on the DDPM process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    (eq. 4, eps the first draw of ``noise``), then the reverse process from x_t to x_0 with the named sampler
    (:func:`ddpm.core.samplers.run_sampler`) on :func:`sdedit_timesteps` (``steps`` network calls, at most t).

    x0: (N, *shape) in the model's range; t: the paper's time, 0..T; at t = 0 nothing is drawn and x0 comes
    back unchanged.  The result is a draw from the model given that x_t: for small t it keeps the image's
    details, for t near T it keeps nothing (a fresh sample).  Returns x_0.
    """
    t = _check_t(schedule, t)
    x0 = x0.to(noise.device, torch.float32)
    if t == 0:
        if on_step is not None:
            on_step(Step(0, 0, x0, x0))
        return x0.clone()
    if len(noise) != len(x0):
        raise ValueError(f"{len(x0)} images but {len(noise)} noise streams; pass one seed per image")
    ts = sdedit_timesteps(schedule, t, steps)
    x_t = noise_to(schedule, x0, t, noise.randn(tuple(x0.shape[1:]))).x
    return run_sampler(original_time_model(model, ts), respace(schedule, ts), noise, tuple(x0.shape[1:]),
                       sampler=sampler, steps=None, eta=eta, variance=variance, clip_denoised=clip_denoised,
                       progress=progress, on_step=_at_original_times(on_step, ts), x_T=x_t)


def repaint_schedule(steps: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """The order in which RePaint visits the S = ``steps`` levels (Lugmayr et al. 2022, Sec. 4.2 and their code's
    jump schedule): respaced 0-based indices from S - 1 (where x starts, as noise) down to -1 (x_0).  Going down
    one index is one network call; going up is a jump.  At each index i = 0, j, 2j, ... below S - j
    (j = ``jump_length``), reached going down, the path jumps back up to i + j, ``resample`` - 1 times, so each of
    those windows is denoised ``resample`` times.  ``resample=1`` never jumps (plain replacement)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if jump_length < 1:
        raise ValueError(f"jump_length must be >= 1, got {jump_length}")
    if resample > 1 and jump_length >= steps:
        raise ValueError(f"jump_length {jump_length} leaves no room for a jump in {steps} steps; "
                         f"pass a jump length below {steps}")
    jumps = {i: resample - 1 for i in range(0, steps - jump_length, jump_length)}
    i, path = steps - 1, [steps - 1]
    while i >= 0:
        i -= 1
        path.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            i += jump_length
            path.append(i)
    return path


def repaint_calls(steps: int, jump_length: int = 10, resample: int = 10) -> int:
    """Network calls of :func:`repaint_sample`: the downward moves of :func:`repaint_schedule`."""
    path = repaint_schedule(steps, jump_length, resample)
    return sum(b < a for a, b in zip(path[:-1], path[1:]))


def _t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(i), device=x.device, dtype=torch.long)


@torch.inference_mode()
def repaint_sample(model: ModelFn, schedule: Schedule, x0: torch.Tensor, mask: torch.Tensor, noise: PerSampleNoise,
                   *, steps: int | None = None, spacing: str = "uniform", jump_length: int = 10, resample: int = 10,
                   variance: str = "fixed-large", clip_denoised: bool = True,
                   on_step: OnStep | None = None) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1 with jumps): fill the pixels where ``mask`` is True from the model,
    given the others from ``x0``.

    With m the known pixels (``~mask``), every reverse step from x_t goes to
        x_{t-1}^known   = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) eps      (eq. 8: the image re-noised)
        x_{t-1}^unknown = mu_theta(x_t, t) + sigma_t z                        (eq. 9: Algorithm 2's step)
        x_{t-1}         = m * x_{t-1}^known + (1 - m) * x_{t-1}^unknown       (eq. 10)
    with eps = z = 0 at the last step, so the known pixels of the result are exactly x0's.  The levels follow
    :func:`repaint_schedule`; a jump up from level a to b = a + j draws x_b ~ q(x_b | x_a) =
    N(sqrt(abar_b / abar_a) x_a, (1 - abar_b / abar_a) I), which is the paper's x_t ~ N(sqrt(1 - beta_t) x_{t-1},
    beta_t I) taken j times.  ``resample=1`` is plain replacement (the known pixels pasted in at every step).

    x0: (N, *shape) in the model's range; mask: bool, x0's shape or broadcastable to it (e.g. (N, 1, H, W)),
    True where the model paints.  steps: the S levels of a respaced schedule (:func:`ddpm.core.respace.respace`,
    picked by ``spacing``; default all T), on which beta, sigma and abar above are the respaced ones; the
    network sees the original indices.  x starts at level S - 1 as N(0, I) noise.  Network calls:
    :func:`repaint_calls` (about S x resample).  ``on_step``: called before the first and after every reverse
    step (not after jumps), with ``left`` the calls still to make.  Returns x_0.
    """
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if len(noise) != len(x0):
        raise ValueError(f"{len(x0)} images but {len(noise)} noise streams; pass one seed per image")
    S = schedule.num_timesteps if steps is None else int(steps)
    path = repaint_schedule(S, jump_length, resample)  # checks steps, jump_length and resample
    ts = timestep_sequence(schedule, S, spacing)
    reverse = respace(schedule, ts)
    abar = reverse.alpha_bars.tolist()
    shape: Sequence[int] = tuple(x0.shape[1:])
    x0 = x0.to(noise.device, torch.float32)
    try:
        paint = torch.broadcast_to(mask.to(noise.device, torch.bool), x0.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x0.shape)}") from None
    left = sum(b < a for a, b in zip(path[:-1], path[1:]))
    x = noise.randn(shape)
    if on_step is not None:
        on_step(Step(left, int(ts[-1]) + 1, x, None))
    for a, b in zip(path[:-1], path[1:]):
        if b > a:  # a jump back up: x_b ~ q(x_b | x_a)
            ratio = abar[b] / abar[a]
            x = math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * noise.randn(shape)
            continue
        out = p_mean_variance(reverse, model(x, _t(ts[a], x)).float(), x, _t(a, x), variance=variance,
                              clip_denoised=clip_denoised)
        if b >= 0:
            known = math.sqrt(abar[b]) * x0 + math.sqrt(1.0 - abar[b]) * noise.randn(shape)  # eq. 8
            unknown = out.mean + (0.5 * out.log_variance).exp() * noise.randn(shape)       # eq. 9
        else:
            known, unknown = x0, out.mean
        x = torch.where(paint, unknown, known)                                               # eq. 10
        left -= 1
        if on_step is not None:
            on_step(Step(left, int(ts[b]) + 1 if b >= 0 else 0, x, out.pred_x0))
    return x
