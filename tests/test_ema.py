"""Post-hoc EMA (Karras et al. 2024, EDM2, Sec. 3 and App. C): the power-function profile and its length against
closed forms and quadrature, the tracker against its unrolled weights, and the least-squares reconstruction."""
import math

import numpy as np
import pytest
import torch

from ddpm.core.ema import (
    gamma_from_sigma_rel,
    posthoc_coefficients,
    power_ema_beta,
    power_ema_weights,
    profile_inner_product,
    sigma_rel_from_gamma,
)
from ddpm.training.ema import PowerEMA, reconstruct


def test_sigma_rel_of_gamma_is_the_profiles_relative_std_and_the_papers_values():
    """eq. 8 against the std of the profile (gamma + 1) u^gamma on (0, 1], by midpoint quadrature on 10^6 cells
    (error O(1e-12) for these smooth integrands), and EDM2's pairs sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94."""
    u = (np.arange(1_000_000) + 0.5) / 1_000_000
    for gamma in (0.0, 1.0, 6.94, 16.97, 40.0):
        p = (gamma + 1) * u ** gamma
        mean = (p * u).mean()
        std = math.sqrt((p * (u - mean) ** 2).mean())
        assert sigma_rel_from_gamma(gamma) == pytest.approx(std, rel=1e-6)
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.005)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.005)
    assert sigma_rel_from_gamma(0.0) == pytest.approx(1 / math.sqrt(12), rel=1e-15)  # the uniform average


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.08, 0.10, 0.2, 0.29])
def test_gamma_from_sigma_rel_inverts_eq_8(sigma_rel):
    gamma = gamma_from_sigma_rel(sigma_rel)
    assert gamma > (math.sqrt(5) - 3) / 2  # on the falling branch of eq. 8
    assert sigma_rel_from_gamma(gamma) == pytest.approx(sigma_rel, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.3, 0.5, float("nan")])
def test_lengths_outside_eq_8s_range_are_refused(bad):
    with pytest.raises(ValueError, match="sigma_rel must lie in"):
        gamma_from_sigma_rel(bad)


def test_tracked_recurrence_equals_its_unrolled_weights_and_the_profile_integrated_per_step():
    """eq. 3 run on the unit vectors theta_tau = e_tau yields its weights; they are the integral of the continuous
    profile (gamma + 1) s^gamma / t^(gamma + 1) over (tau - 1, tau] (here by 2000-cell midpoint quadrature, error
    below 1e-9 per step), sum to 1, and put their mass where the profile does."""
    t, gamma = 60, gamma_from_sigma_rel(0.10)
    ema = np.zeros(t)
    for step in range(1, t + 1):
        beta = power_ema_beta(step, gamma)
        ema = beta * ema + (1 - beta) * np.eye(t)[step - 1]
    w = power_ema_weights(t, gamma)
    np.testing.assert_allclose(ema, w, rtol=1e-12, atol=1e-15)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    cells = (np.arange(2000) + 0.5) / 2000
    integral = [((gamma + 1) * (tau - 1 + cells) ** gamma / t ** (gamma + 1)).mean() for tau in range(1, t + 1)]
    np.testing.assert_allclose(w, integral, rtol=1e-6, atol=1e-12)
    assert power_ema_beta(1, gamma) == 0.0  # theta^_1 = theta_1


def test_profile_inner_product_against_quadrature():
    """The closed form of <p_a, p_b> against midpoint quadrature over (0, max(t_a, t_b)] on 4e6 cells (the profiles
    are smooth there; the relative error is below 1e-6)."""
    for ta, ga, tb, gb in [(100, 6.94, 100, 16.97), (40, 6.94, 100, 6.94), (100, 16.97, 40, 6.94), (7, 2.0, 3, 0.5)]:
        hi = max(ta, tb)
        s = (np.arange(4_000_000) + 0.5) / 4_000_000 * hi
        pa = np.where(s <= ta, (ga + 1) * s ** ga / ta ** (ga + 1), 0.0)
        pb = np.where(s <= tb, (gb + 1) * s ** gb / tb ** (gb + 1), 0.0)
        assert float(profile_inner_product(ta, ga, tb, gb)) == pytest.approx((pa * pb).mean() * hi, rel=1e-5)


def _track(values: torch.Tensor, every: int, tmp_path):
    """Run PowerEMA over a sequence of weight vectors (one per step), writing snapshots every ``every`` steps."""
    model = torch.nn.Linear(values.shape[1], 1, bias=False)
    ema = PowerEMA(model)
    for t in range(1, len(values) + 1):
        with torch.no_grad():
            model.weight.copy_(values[t - 1][None])
        ema.update(model, t)
        if t % every == 0 or t == len(values):
            ema.write_snapshot(tmp_path, t)
    return ema


def test_reconstructing_a_tracked_profile_from_its_own_snapshots_gives_the_tracked_ema(tmp_path):
    torch.manual_seed(0)
    values = torch.randn(300, 16).cumsum(0)
    ema = _track(values, 50, tmp_path)
    for sigma_rel, module in zip(ema.sigma_rels, ema.modules):
        weights, record = reconstruct(tmp_path, sigma_rel)
        assert record["step"] == 300 and record["snapshots"] == 6
        # float32 snapshots summed in float64 with coefficients ~ a unit vector: float32 rounding alone
        torch.testing.assert_close(weights["weight"], module.weight.detach(), rtol=1e-5, atol=1e-5)


def test_a_reconstructed_length_lands_on_the_directly_computed_power_ema(tmp_path):
    """A random walk theta_tau in R^64 over 2000 steps, snapshots of both profiles every 100: the reconstruction of
    sigma_rel 0.08 (between the tracked 0.05 and 0.10) and 0.15 (beyond them) against the power EMA of that length
    computed from its closed-form weights w.  With w^ the weights the snapshots combine to (closed form too),
    |sum_tau (w^_tau - w_tau) theta_tau| <= ||w^ - w||_1 max |theta|: the test computes that bound exactly, adds the
    float32 rounding of the snapshots (2^-23 relative, times the coefficients' l1 norm), and also requires the
    mismatch ||w^ - w||_1 itself to stay under 1% of the weights' mass (measured: 0.2% and 0.6%), so that a broken
    solver cannot pass on a loose bound."""
    torch.manual_seed(1)
    T, every = 2000, 100
    values = torch.randn(T, 64).cumsum(0).double()
    _track(values.float(), every, tmp_path)
    for sigma_rel in (0.08, 0.15):
        gamma = gamma_from_sigma_rel(sigma_rel)
        direct = torch.from_numpy(power_ema_weights(T, gamma)) @ values
        weights, record = reconstruct(tmp_path, sigma_rel)
        combined = np.zeros(T)
        for term in record["terms"]:
            g = gamma_from_sigma_rel(term["sigma_rel"])
            combined[:term["step"]] += term["coefficient"] * power_ema_weights(term["step"], g)
        mismatch = np.abs(combined - power_ema_weights(T, gamma)).sum()
        assert mismatch < 0.01
        scale = float(values.abs().max())
        coef_l1 = sum(abs(t["coefficient"]) for t in record["terms"])
        bound = mismatch * scale + coef_l1 * scale * 2 ** -23
        error = float((weights["weight"][0].double() - direct).abs().max())
        assert error <= bound


def test_posthoc_coefficients_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="one step"):
        posthoc_coefficients([1, 2], [3.0], 2, 3.0)
