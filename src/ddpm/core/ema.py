"""Power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", EDM2: Sec. 3 and App. C.1-C.3).  Pure maths on numbers and float64 arrays.

A power-function EMA of exponent gamma averages the trained weights theta_1..theta_t (t counts optimiser steps
from 1) with the profile p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on 0 < tau <= t (eq. 2, Sec. 3.1).  It is
tracked by theta^_t = beta_t theta^_(t-1) + (1 - beta_t) theta_t with beta_t = (1 - 1/t)^(gamma + 1) (eq. 3), whose
weights are, exactly, :func:`power_ema_weights`: w_tau = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1), the
integral of p_t over the step (tau - 1, tau].  Its length is sigma_rel, the standard deviation of p_t relative to
t (App. C.1, eq. 8): sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))), a decreasing function of gamma;
:func:`gamma_from_sigma_rel` inverts it (the root of a cubic, as the paper's code solves it).

Post-hoc (App. C.3): snapshots of two tracked profiles taken every few steps are combined, theta^_r = sum_i x_i
theta^_i, with x the least-squares solution of A x = b, A_ij = <p_i, p_j> and b_i = <p_i, p_r>, the inner products
of the power profiles on the continuous time axis (:func:`profile_inner_product`, closed form).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["sigma_rel_from_gamma", "gamma_from_sigma_rel", "power_ema_beta", "power_ema_weights",
           "profile_inner_product", "posthoc_coefficients"]


def sigma_rel_from_gamma(gamma: float) -> float:
    """EDM2 eq. 8 (App. C.1): the relative standard deviation of the profile of exponent ``gamma`` (> -1)."""
    if not gamma > -1:
        raise ValueError(f"gamma must be > -1, got {gamma}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The gamma of EMA length ``sigma_rel``: eq. 8 squared and rearranged is the cubic
    gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0 with s = sigma_rel; its largest real root.  eq. 8 rises
    from 0 at gamma = -1 to its maximum 0.3003 at gamma = (sqrt 5 - 3) / 2 and falls after it (0.2887 = 1/sqrt 12 at
    gamma = 0, the uniform average); the largest root is the one on the falling branch, so sigma_rel must lie in
    (0, 0.3)."""
    s2 = float(sigma_rel) ** -2 if sigma_rel > 0 else math.inf
    if not (math.isfinite(s2) and sigma_rel < 0.3):
        raise ValueError(f"sigma_rel must lie in (0, 0.3), got {sigma_rel}")
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    real = roots[np.abs(roots.imag) < 1e-9].real
    gamma = float(real.max())
    # polish with Newton on the cubic (np.roots goes through an eigenvalue solver, good to ~1e-12 relative)
    for _ in range(3):
        f = ((gamma + 7.0) * gamma + 16.0 - s2) * gamma + 12.0 - s2
        gamma -= f / ((3.0 * gamma + 14.0) * gamma + 16.0 - s2)
    return gamma


def power_ema_beta(t: int, gamma: float) -> float:
    """EDM2 eq. 3: beta_t = (1 - 1/t)^(gamma + 1) for step t >= 1 (so theta^_1 = theta_1)."""
    if t < 1:
        raise ValueError(f"t counts steps from 1, got {t}")
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def power_ema_weights(t: int, gamma: float) -> np.ndarray:
    """(t,) float64: the weight of theta_1..theta_t in the tracked power EMA at step t (eq. 3 unrolled):
    (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1); they sum to 1."""
    tau = np.arange(1, t + 1, dtype=np.float64) / t
    return tau ** (gamma + 1.0) - (tau - 1.0 / t) ** (gamma + 1.0)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_a, p_b> = integral_0^inf p_a(tau) p_b(tau) dtau of two power profiles ending at steps t_a, t_b (App. C.3;
    arrays broadcast): (gamma_a+1)(gamma_b+1) (t_lo/t_hi)^gamma_hi / ((gamma_a+gamma_b+1) t_hi), where t_hi is the
    later end, gamma_hi its exponent and t_lo the earlier end."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    ratio = np.minimum(t_a, t_b) / np.maximum(t_a, t_b)
    g_hi = np.where(t_a >= t_b, g_a, g_b)
    return (g_a + 1) * (g_b + 1) * ratio ** g_hi / ((g_a + g_b + 1) * np.maximum(t_a, t_b))


def posthoc_coefficients(snapshot_steps, snapshot_gammas, target_step: int, target_gamma: float) -> np.ndarray:
    """x (n,) float64, the least-squares combination (App. C.3) of the snapshots (steps t_i, exponents gamma_i)
    whose profile is closest, in L2 on the time axis, to the power profile (target_step, target_gamma):
    the minimum-norm solution of A x = b (numpy's lstsq)."""
    t = np.asarray(snapshot_steps, dtype=np.float64)
    g = np.asarray(snapshot_gammas, dtype=np.float64)
    if t.shape != g.shape or t.ndim != 1 or len(t) == 0 or (t < 1).any():
        raise ValueError("posthoc_coefficients needs one step (>= 1) and one gamma per snapshot")
    A = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner_product(t, g, float(target_step), float(target_gamma))
    return np.linalg.lstsq(A, b, rcond=None)[0]
