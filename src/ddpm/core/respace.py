"""Sampling on a subset of the T timesteps: which subset, and the schedule that lives on it.

A fast sampler visits S <= T of the training timesteps.  :func:`timestep_sequence` picks them (0-based
indices, increasing, see :mod:`ddpm.core.schedule`); :func:`respace` builds the S-step schedule whose
abar values are the kept ones, with betas recomputed as beta_k = 1 - abar_{t_k} / abar_{t_{k-1}}
(Nichol & Dhariwal 2021, Sec. 4), so every posterior term of eq. 7 of Ho et al. 2020 holds between kept
steps.  Respaced index k stands for original index ``timesteps[k]``; the network must always be called
with the original index, which :func:`original_time_model` arranges.

Spacings (all return exactly S distinct indices for any 1 <= S <= T; with S = 1 every spacing gives the one
index T - 1, so that a single step starts from pure noise rather than from index 0, where the formulas below
would put it):

* ``"uniform"``   t_k = floor(k T / S): the DDIM code's ``range(0, T, T // S)`` extended to any S
  (Song et al. 2021, App. D.2).  Starts at index 0, stops T/S short of T - 1.
* ``"quadratic"`` t_k = floor((k / (S - 1))^2 * 0.8 T): the DDIM code's quadratic sequence, dense at
  low noise; repeats at the start (the code's sequence has them once S > sqrt(0.8 T)) are pushed up to
  the next free index instead of wasting network calls.
* ``"trailing"``  t_k = round(T - (S - 1 - k) T / S) - 1: uniform but anchored at T - 1 (Lin et al. 2024,
  "Common diffusion noise schedules and sample steps are flawed", Table 2).
* ``"logsnr"``    uniform in lambda = log(alpha_t / sigma_t) = 0.5 log(abar_t / (1 - abar_t)) between
  index T - 1 and index 0 (Lu et al. 2022, DPM-Solver, Sec. 3.3 "logSNR" skip type), each point rounded
  to the nearest training index so the network only ever sees the integers it was trained on.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .schedule import Schedule

__all__ = ["SPACINGS", "timestep_sequence", "respace", "log_snr", "original_time_model"]

SPACINGS = ("uniform", "quadratic", "trailing", "logsnr")


def log_snr(alpha_bars: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = 0.5 (log abar - log(1 - abar)), float64 (Lu et al. 2022, Sec. 3.1)."""
    alpha_bars = torch.as_tensor(alpha_bars, dtype=torch.float64)
    return 0.5 * (alpha_bars.log() - torch.log1p(-alpha_bars))


def _distinct_increasing(targets: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Integer targets (non-decreasing, length S <= T) -> S strictly increasing indices in [0, T - 1].

    Each index is clipped to [k, T - S + k] (the only room left for k earlier and S - 1 - k later ones),
    then a repeat is pushed to one past its predecessor; by induction the result stays <= T - S + k.
    """
    s = len(targets)
    k = torch.arange(s, dtype=torch.long)
    t = torch.minimum(torch.maximum(targets.long(), k), num_timesteps - s + k).tolist()
    for j in range(1, s):
        t[j] = max(t[j], t[j - 1] + 1)
    return torch.tensor(t, dtype=torch.long)


def timestep_sequence(schedule: Schedule, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """The S = ``steps`` original 0-based timestep indices a sampler visits, increasing, as a (S,) long tensor.

    The sampler walks them from last to first; see the module docstring for the spacings.
    """
    T = schedule.num_timesteps
    steps = int(steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T={T}], got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if steps == 1:  # one step: from pure noise (uniform and quadratic would start at index 0)
        return torch.tensor([T - 1], dtype=torch.long)
    k = torch.arange(steps, dtype=torch.float64)
    if spacing == "uniform":
        targets = torch.arange(steps, dtype=torch.long) * T // steps
    elif spacing == "quadratic":
        top = math.sqrt(0.8 * T)
        targets = (torch.linspace(0, top, steps, dtype=torch.float64) ** 2).floor()
    elif spacing == "trailing":
        targets = torch.round(T - (steps - 1 - k) * T / steps) - 1
    else:  # logsnr: lambda decreases with t, so walk from lambda(index 0) down to lambda(index T - 1)
        lam = log_snr(schedule.alpha_bars)
        goal = torch.linspace(lam[0].item(), lam[-1].item(), steps, dtype=torch.float64)
        # index of the nearest lambda: first index whose lambda is <= goal, or the one before it
        above = torch.searchsorted(-lam, -goal).clamp(max=T - 1)
        below = (above - 1).clamp(min=0)
        closer_below = (lam[below] - goal).abs() < (lam[above] - goal).abs()
        targets = torch.where(closer_below, below, above)
    return _distinct_increasing(targets, T)


def respace(schedule: Schedule, timesteps: torch.Tensor) -> Schedule:
    """The schedule on the kept timesteps: abar'_k = abar_{t_k}, beta'_k = 1 - abar'_k / abar'_{k-1} (abar'_{-1} = 1).

    Nichol & Dhariwal 2021, Sec. 4.  Keeping every index reproduces ``schedule`` itself.
    """
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)
    if timesteps.ndim != 1 or len(timesteps) == 0:
        raise ValueError("timesteps must be a non-empty 1-D sequence")
    if bool((timesteps[1:] <= timesteps[:-1]).any()):
        raise ValueError("timesteps must be strictly increasing")
    if int(timesteps[0]) < 0 or int(timesteps[-1]) >= schedule.num_timesteps:
        raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}]")
    return Schedule.from_alpha_bars(schedule.alpha_bars[timesteps])


def original_time_model(model: Callable, timesteps: torch.Tensor) -> Callable:
    """Wrap ``model(x, t)`` so that it can be called with respaced indices k: it receives ``timesteps[k]``."""
    timesteps = torch.as_tensor(timesteps, dtype=torch.long)

    def wrapped(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return model(x, timesteps.to(k.device)[k.long()])

    return wrapped
