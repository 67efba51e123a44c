"""Classifier-free guidance (Ho & Salimans 2022): a conditional noise predictor pushed away from the unconditional one.

One network learns both eps_theta(x_t, t, y) and eps_theta(x_t, t) = eps_theta(x_t, t, "no class") (the trainer
drops labels to "no class" now and then).  At sampling time the two are mixed (Ho & Salimans 2022, eq. 6):

    eps~(x_t, t, y) = (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t)

**The convention.** ``w`` here is the paper's w: w = 0 is the purely conditional model, w > 0 guides beyond it
(sharper, more typical members of the class, less variety).  Libraries that speak of a "guidance scale" s
(diffusers' ``guidance_scale``, GLIDE, Stable Diffusion) write eps~ = eps_u + s (eps_c - eps_u), which is the same
mix with s = 1 + w: their s = 1 is our w = 0, their s = 7.5 our w = 6.5.

Since eps = -sqrt(1 - abar_t) grad log p_t(x_t) (Song et al. 2021), the mixed prediction is the score of
p_t(x_t | y)^(1+w) / p_t(x_t)^w, proportional to p_t(x_t | y) p_t(y | x_t)^w: the conditional density tilted by
an implicit classifier raised to the power w.

:func:`guided_model` turns a labelled network ``f(x, t, y)`` into the ``model(x, t)`` every sampler takes, so each
sampler (Algorithm 2, respaced DDPM, DDIM, DPM-Solver++) guides without knowing it.  With w > 0 it runs the
conditional and the unconditional pass as **one** forward of the network on the batch doubled
(concat([x, x]), labels concat([y, no class])), then splits the output; with w = 0 it makes one pass on the
batch as it is.  Pure tensor functions: no network, no schedule.

**Guidance in an interval** (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality"): ``interval=(lo, hi)`` guides only the steps whose 0-based time index lies in lo..hi and
makes the plain conditional pass elsewhere, so a step outside costs one pass of the batch, not of twice the batch.
They found guidance at the noisiest steps to cost variety (every sample driven to the same few modes early) and
at the last steps to do little; a middle interval kept most of its benefit.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["LabelledModelFn", "guidance_combine", "guided_model", "check_guidance", "check_interval"]

#: a labelled noise predictor f(x_t, t, y) -> output: y (B,) int64 labels, "no class" included
LabelledModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_guidance(w: float) -> float:
    """``w`` as a float, refused (ValueError) unless it is a finite number >= 0."""
    w = float(w)
    if not (w >= 0 and w != float("inf")):
        raise ValueError(f"guidance w must be a finite number >= 0 (0: purely conditional), got {w}")
    return w


def check_interval(interval, num_timesteps: int) -> tuple[int, int] | None:
    """``interval`` (lo, hi) of 0-based time indices as ints with 0 <= lo <= hi < num_timesteps (ValueError
    otherwise); None stays None (guidance at every step)."""
    if interval is None:
        return None
    lo, hi = (int(v) for v in interval)
    if not 0 <= lo <= hi < num_timesteps:
        raise ValueError(f"guidance interval {lo}..{hi} (0-based time indices) must lie within 0..{num_timesteps - 1} "
                         "with its start no later than its end")
    return lo, hi


def guidance_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """eps~ = (1 + w) eps_cond - w eps_uncond (Ho & Salimans 2022, eq. 6); w = 0 returns eps_cond."""
    if w == 0:
        return eps_cond
    return (1.0 + w) * eps_cond - w * eps_uncond


def guided_model(model: LabelledModelFn, labels: torch.Tensor, w: float, null_label: int,
                 eps_channels: int | None = None, interval: tuple[int, int] | None = None
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model(x, t)`` for the samplers: the guided prediction eps~ of :func:`guidance_combine` for the (B,) class
    ``labels`` of the batch (sample k has label ``labels[k]``; a sample labelled ``null_label`` is drawn from the
    unconditional model, since eps~ = eps_u for it).

    w > 0: one call ``model(cat([x, x]), cat([t, t]), cat([labels, null]))`` on the doubled batch, split into the
    conditional half and the unconditional half.  w = 0: one call ``model(x, t, labels)``.
    eps_channels: how many leading output channels are eps (None: all).  The other channels (a learned variance,
    Nichol & Dhariwal 2021) are not mixed; they come from the conditional pass, as GLIDE does.
    interval: (lo, hi), 0-based time indices: guide only where lo <= t <= hi; elsewhere the conditional pass alone
    (a batch whose samples stand at different t is guided where each sample's t says).
    """
    w = check_guidance(w)
    labels = torch.as_tensor(labels, dtype=torch.long)

    def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, labels.to(x.device))

    if w == 0:
        return conditional

    def both(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) outputs from one pass on the doubled batch."""
        y = labels.to(x.device)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
        return out[:x.shape[0]], out[x.shape[0]:]

    def mixed(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        c = cond.shape[1] if eps_channels is None else eps_channels
        eps = guidance_combine(cond[:, :c], uncond[:, :c], w)
        return eps if c == cond.shape[1] else torch.cat([eps, cond[:, c:]], dim=1)

    def guided_everywhere(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mixed(*both(x, t))

    if interval is None:
        return guided_everywhere
    lo, hi = interval

    def guided_in_interval(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inside = (t >= lo) & (t <= hi)
        if not bool(inside.any()):
            return conditional(x, t)
        cond, uncond = both(x, t)
        if bool(inside.all()):
            return mixed(cond, uncond)
        # samples at different t: the guided mix where t is inside, the doubled pass's conditional half elsewhere
        return torch.where(inside.view(-1, *[1] * (x.ndim - 1)), mixed(cond, uncond), cond)

    return guided_in_interval
