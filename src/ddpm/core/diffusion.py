"""The DDPM forward process and the reverse model's Gaussian, as pure tensor functions.

Nothing here draws random numbers or changes an input in place: noise is passed in.
``t`` is always a (B,) tensor of 0-based timestep indices (see :mod:`ddpm.core.schedule`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .schedule import Schedule, extract

__all__ = [
    "VARIANCE_TYPES", "q_sample", "q_posterior", "predict_x0_from_eps", "predict_eps_from_x0",
    "model_variance", "split_model_output", "PMeanVariance", "p_mean_variance", "loss_simple", "min_snr_weights",
    "sample_timesteps",
]

#: sigma_t^2 choices: beta_t ("fixed-large"), beta~_t ("fixed-small"), or interpolated by the network
#: (Nichol & Dhariwal 2021, eq. 15, "learned-range").
VARIANCE_TYPES = ("fixed-large", "fixed-small", "learned-range")


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) in closed form (eq. 4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
    return extract(schedule.sqrt_alpha_bars, t, x0) * x0 + extract(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """Mean, variance and log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7).

    mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    variance = beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t.  The log-variance is clipped at t = 1
    (where beta~_1 = 0) to log beta~_2.  Variance and log-variance have shape (B, 1, ..., 1).
    """
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    variance = extract(schedule.posterior_variance, t, x_t)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


def predict_x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for x_0: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (extract(schedule.sqrt_recip_alpha_bars, t, x_t) * x_t
            - extract(schedule.sqrt_recipm1_alpha_bars, t, x_t) * eps)


def predict_eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for eps: eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1)."""
    return ((extract(schedule.sqrt_recip_alpha_bars, t, x_t) * x_t - x0)
            / extract(schedule.sqrt_recipm1_alpha_bars, t, x_t))


def model_variance(schedule: Schedule, t: torch.Tensor, like: torch.Tensor, variance: str,
                   v: torch.Tensor | None = None):
    """sigma_t^2 and log sigma_t^2 of p_theta(x_{t-1} | x_t) for a variance type.

    fixed-large: sigma_t^2 = beta_t, except beta~_2 at t = 1 as in Ho et al.'s code, so that the decoder L_0 and
    the bits/dim match theirs (Algorithm 2 adds no noise at t = 1); fixed-small: sigma_t^2 = beta~_t (Sec. 3.2);
    learned-range: log sigma_t^2 = v log beta_t + (1 - v) log beta~_t with the network's v mapped from
    [-1, 1] to [0, 1] (Nichol & Dhariwal 2021, eq. 15).
    """
    if variance == "fixed-large":
        log_var = extract(schedule.fixed_large_log_variance, t, like)
    elif variance == "fixed-small":
        log_var = extract(schedule.posterior_log_variance_clipped, t, like)
    elif variance == "learned-range":
        if v is None:
            raise ValueError("learned-range variance needs the network's v output")
        frac = (v + 1) / 2
        log_var = (frac * extract(schedule.log_betas, t, like)
                   + (1 - frac) * extract(schedule.posterior_log_variance_clipped, t, like))
    else:
        raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
    if variance != "learned-range":
        log_var = log_var.expand_as(like)
    return log_var.exp(), log_var


class PMeanVariance(NamedTuple):
    """The reverse step's Gaussian p_theta(x_{t-1} | x_t) = N(mean, variance), plus the predictions behind it."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor


def split_model_output(model_output: torch.Tensor, x_t: torch.Tensor, variance: str):
    """Split a network output into (eps, v): v is the second half of the channels for learned-range."""
    if variance == "learned-range":
        if model_output.shape[1] != 2 * x_t.shape[1]:
            raise ValueError(f"learned-range variance needs {2 * x_t.shape[1]} output channels, "
                             f"got {model_output.shape[1]}")
        eps, v = model_output.chunk(2, dim=1)
        return eps, v
    if model_output.shape != x_t.shape:
        raise ValueError(f"model output shape {tuple(model_output.shape)} != x_t shape {tuple(x_t.shape)}")
    return model_output, None


def p_mean_variance(schedule: Schedule, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, *,
                    variance: str = "fixed-large", clip_denoised: bool = False) -> PMeanVariance:
    """The reverse Gaussian p_theta(x_{t-1} | x_t) from a network's eps prediction.

    Unclipped, the mean is eq. 11: mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t).
    With ``clip_denoised`` the predicted x_0 is clamped to [-1, 1] and the mean is the posterior mean of
    eq. 7 at that x_0 (identical to eq. 11 when nothing is clamped).
    """
    eps, v = split_model_output(model_output, x_t, variance)
    var, log_var = model_variance(schedule, t, x_t, variance, v)
    pred_x0 = predict_x0_from_eps(schedule, x_t, t, eps)
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = q_posterior(schedule, pred_x0, x_t, t)
    else:
        mean = extract(schedule.sqrt_recip_alphas, t, x_t) * (x_t - extract(schedule.eps_coef, t, x_t) * eps)  # eq. 11
    return PMeanVariance(mean, var, log_var, pred_x0, eps)


def sample_timesteps(batch_size: int, num_timesteps: int, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """t ~ Uniform{0..T-1} (the paper's Uniform{1..T}), Algorithm 1 line 3."""
    return torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device)


def loss_simple(model_output: torch.Tensor, noise: torch.Tensor, variance: str = "fixed-large",
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_simple (eq. 14): mean over batch and pixels of ||eps - eps_theta(x_t, t)||^2, Algorithm 1 line 5.

    ``model_output`` is the network applied to x_t = q_sample(x0, t, noise); for learned-range only the
    eps half enters this loss.  ``weights`` (B,), e.g. :func:`min_snr_weights`, weigh each sample's mean over its
    pixels before the mean over the batch; None is the paper's unweighted L_simple.
    """
    eps = model_output[:, : noise.shape[1]] if variance == "learned-range" else model_output
    if weights is None:
        return F.mse_loss(eps.float(), noise.float())
    per_sample = (eps.float() - noise.float()).square().flatten(1).mean(1)
    return (weights.to(per_sample) * per_sample).mean()


def min_snr_weights(schedule: Schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for eps-prediction (Hang et al. 2023, eq. 9 with eps as the target):
    w_t = min(SNR_t, gamma) / SNR_t with SNR_t = abar_t / (1 - abar_t), float32 (B,).

    The weight is 1 where the noise dominates (SNR_t <= gamma, most of the T steps) and gamma / SNR_t < 1 at the
    few low-noise steps whose easy, conflicting gradients the paper found to slow training down."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    abar = schedule.alpha_bars.to(t.device)[t]
    snr = abar / (1.0 - abar)
    return (snr.clamp(max=gamma) / snr).float()
