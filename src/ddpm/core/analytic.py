"""The optimal reverse variance of Analytic-DPM (Bao et al. 2022), for Algorithm 2 on all T or on respaced steps.

Take one step of the reverse process from x_k to x_{k-1} (a respaced chain is one too, with the betas of
:func:`ddpm.core.respace.respace`): alpha_k = abar_k / abar_{k-1}, beta_k = 1 - alpha_k, and the posterior variance
beta~_k = (1 - abar_{k-1}) / (1 - abar_k) beta_k of eq. 7 of Ho et al. 2020.  Among Gaussians
p(x_{k-1} | x_k) = N(mu_k(x_k), sigma_k^2 I), the KL to the true reverse process is smallest for the usual mean
(eq. 11, the posterior mean around the predicted x_0) and (Bao et al. 2022, Theorem 1, with lambda^2 = beta~ and the
score written through the noise, grad log q(x_k) = -E[eps | x_k] / sqrt(1 - abar_k))

    sigma*_k^2 = beta~_k + beta_k^2 / (alpha_k (1 - abar_k)) * (1 - Gamma_k),     Gamma_k = E ||eps_theta(x_k)||^2 / d

with the expectation over x_0 from the data and x_k ~ q(x_k | x_0).  Where the network is sure of the noise
(Gamma near 1) the step adds only beta~; where it cannot tell, up to beta_k / alpha_k, about the paper's beta.
The two fixed choices of Ho et al. are the two ends of this range; Analytic-DPM picks the point the data asks for,
which matters most when a few large respaced steps stand in for many small ones.

Bao et al.'s Theorem 2 bounds it: 1 - Gamma lies in [0, 1], and for data in [-1, 1] the uncertainty about x_0 is at
most 1 per pixel, so sigma*^2 <= beta~_k + c_k^2 with c_k = sqrt(abar_{k-1}) beta_k / (1 - abar_k) the coefficient
of x_0 in the posterior mean.  :func:`analytic_variances` clips to both, which keeps the Monte Carlo estimate of
Gamma from ever making a step noisier than the data allows.
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedule import Schedule

__all__ = ["analytic_variances", "eps_norm_ratio"]


def analytic_variances(schedule: Schedule, gamma: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """sigma*_k^2 for every step k of ``schedule`` (the reverse chain's own, respaced or not), float64, from
    ``gamma`` (Gamma_k = E ||eps_theta||^2 / d at step k, one per step).  ``data_range``: half the width of the
    data's interval ([-1, 1]: 1), for the upper bound.  Step 0 (abar_{-1} = 1) gets 0: Algorithm 2's last step
    adds no noise."""
    gamma = torch.as_tensor(gamma, dtype=torch.float64).clamp(0.0, 1.0)
    if gamma.shape != (schedule.num_timesteps,):
        raise ValueError(f"need one Gamma per step: {tuple(gamma.shape)} for {schedule.num_timesteps} steps")
    abar, beta = schedule.alpha_bars, schedule.betas
    alpha = 1.0 - beta
    beta_tilde = schedule.posterior_variance
    optimal = beta_tilde + beta ** 2 / (alpha * (1.0 - abar)) * (1.0 - gamma)
    out = torch.minimum(optimal, beta_tilde + (schedule.posterior_mean_coef1 * data_range) ** 2)
    out[0] = 0.0
    return out


@torch.inference_mode()
def eps_norm_ratio(model: Callable, schedule: Schedule, timesteps: torch.Tensor, x0: torch.Tensor,
                   generator: torch.Generator, batch_size: int = 256) -> torch.Tensor:
    """Gamma_k = mean ||eps_theta(x_{t_k}, t_k)||^2 / d over the images ``x0`` (model range, (M, C, H, W)), one
    fresh x_{t_k} ~ q(x_{t_k} | x_0) (eq. 4) per image and kept step; float64, one per entry of ``timesteps``
    (0-based original indices).  ``model(x, t)`` returns eps (the first C channels are used).  The noise comes
    from ``generator`` (on the CPU), so the estimate is reproducible."""
    out = torch.empty(len(timesteps), dtype=torch.float64)
    channels = x0.shape[1]
    for k, t in enumerate(torch.as_tensor(timesteps, dtype=torch.long).tolist()):
        abar = float(schedule.alpha_bars[t])
        total = 0.0
        for start in range(0, len(x0), batch_size):
            x = x0[start:start + batch_size]
            eps = torch.randn(x.shape, generator=generator).to(x.device)
            x_t = abar ** 0.5 * x + (1.0 - abar) ** 0.5 * eps
            pred = model(x_t, torch.full((len(x),), t, device=x.device, dtype=torch.long)).float()[:, :channels]
            total += float(pred.double().pow(2).flatten(1).mean(1).sum())
        out[k] = total / len(x0)
    return out
