"""Checks of the variational bound (eq. 5), the decoder (eq. 13) and the L_vlb / L_hybrid losses.

The central test uses Gaussian data, x0 = 8-bit quantisation of N(m, s^2) per dimension, with the
closed-form optimal noise predictor.  There every expected term of the bound has a closed form, the true
NLL of the quantised data is a finite sum, and the bound's gap above it is known in advance.
"""
import math

import mpmath
import pytest
import torch

from ddpm.core.diffusion import loss_simple, model_variance
from ddpm.core.likelihood import (
    ImportanceSampler,
    TrainingVLB,
    calc_bpd_full,
    calc_bpd_quick,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    loss_vlb,
    normal_kl,
    prior_bpd,
    strata,
    vlb_terms,
)
from ddpm.core.schedule import Schedule, ScheduleConfig, linear_betas, make_schedule

LN2 = math.log(2)
BIN = 2 / 255          # width of one of the 256 bins in [-1, 1]
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1


# ---------------------------------------------------------------------------------------------- normal_kl

def test_normal_kl_zero_for_identical_and_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
    lv1 = 3 * torch.randn(1000, generator=g, dtype=torch.float64)
    lv2 = 3 * torch.randn(1000, generator=g, dtype=torch.float64)
    assert torch.equal(normal_kl(m1, lv1, m1, lv1), torch.zeros(1000, dtype=torch.float64))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)
    assert (normal_kl(m1, lv1, m2, lv2) >= 0).all()


# ---------------------------------------------------------------------------------------------- decoder

EXTREMES = [(0.0, -20.0), (0.3, -20.0), (5.0, -20.0), (-7.3, 5.0), (0.3, 5.0), (1e3, 0.0), (-40.0, -20.0),
            (0.0012, -9.0), (-0.9, -6.0), (0.5, -3.0), (2.0, 1.0), (0.0, 15.0), (3.0, 12.0)]  # last two: midpoint rule


@pytest.mark.parametrize("mean,log_scale", EXTREMES)
def test_decoder_bins_sum_to_one_and_stay_finite(mean, log_scale):
    for dtype in (torch.float64, torch.float32):
        lp = discretized_gaussian_log_likelihood(GRID.to(dtype), torch.tensor(mean, dtype=dtype),
                                                 torch.tensor(log_scale, dtype=dtype))
        assert lp.dtype == dtype and torch.isfinite(lp).all() and (lp <= 0).all()
        # the bins tile the line, so the masses sum to 1; float64 log-space sum, tolerance 1e-5 as specified
        assert abs(torch.logsumexp(lp.double(), 0).exp().item() - 1) < 1e-5


def _mp_log_bin(k, mean, log_scale):
    """log of the mass of bin k, [(k - 1/2)/127.5 - 1, (k + 1/2)/127.5 - 1], with 60-digit arithmetic."""
    s = mpmath.e ** mpmath.mpf(log_scale)
    lo = -mpmath.inf if k == 0 else (mpmath.mpf(k) - mpmath.mpf(1) / 2) / mpmath.mpf(127.5) - 1
    hi = mpmath.inf if k == 255 else (mpmath.mpf(k) + mpmath.mpf(1) / 2) / mpmath.mpf(127.5) - 1
    zl, zh = (lo - mpmath.mpf(mean)) / s, (hi - mpmath.mpf(mean)) / s
    # mpmath's exponent range is unbounded, so tiny tail masses are exact; above the mean use the upper
    # tail so that 1 - 1 never cancels
    mass = mpmath.ncdf(-zl) - mpmath.ncdf(-zh) if zl > 0 else mpmath.ncdf(zh) - mpmath.ncdf(zl)
    return float(mpmath.log(mass))


def test_decoder_matches_high_precision_reference_in_the_tails():
    mpmath.mp.dps = 60
    ks = [0, 1, 60, 127, 128, 200, 254, 255]
    for mean, log_scale in EXTREMES:
        lp = discretized_gaussian_log_likelihood(GRID[ks], torch.tensor(mean, dtype=torch.float64),
                                                 torch.tensor(log_scale, dtype=torch.float64))
        for j, k in enumerate(ks):
            ref = _mp_log_bin(k, mean, log_scale)
            # relative 1e-9: log-space evaluation keeps ~1e-11 even for log-masses of -1e17; midpoint rule 1e-12
            assert lp[j].item() == pytest.approx(ref, rel=1e-9, abs=1e-12), (mean, log_scale, k)


def test_decoder_gradients_are_finite_at_extremes():
    x = GRID.repeat(len(EXTREMES))
    mean = torch.tensor([m for m, _ in EXTREMES], dtype=torch.float64).repeat_interleave(256).requires_grad_()
    ls = torch.tensor([s for _, s in EXTREMES], dtype=torch.float64).repeat_interleave(256).requires_grad_()
    discretized_gaussian_log_likelihood(x, mean, ls).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(ls.grad).all()
    # d/dmean log p for a bin far below a narrow Gaussian: about -(x - mean)/sigma^2 * ... > 0 pulls the mean down
    assert mean.grad[256 * 2 + 100] < 0


def test_decoder_agrees_with_density_times_width_for_wide_gaussians():
    """sigma = 0.5 spans 64 bins: log p = log(phi((x - mu)/sigma) / sigma * 2/255) + O((bin/sigma)^2 / 24)."""
    mu, sigma = 0.1, 0.5
    lp = discretized_gaussian_log_likelihood(GRID[1:-1], torch.tensor(mu, dtype=torch.float64),
                                             torch.tensor(math.log(sigma), dtype=torch.float64))
    z = (GRID[1:-1] - mu) / sigma
    approx = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - math.log(sigma) + math.log(BIN)
    assert (lp - approx).abs().max().item() < (BIN / sigma) ** 2 / 24 * 10  # |z^2 - 1| <= 10 on the grid


# ---------------------------------------------------------------------------------------------- prior and variance

def test_full_sum_adds_the_prior_term():
    """A 10-step schedule leaves abar_T ~ 0.99, so L_T is large; total = L_T + sum of the T terms."""
    s = make_schedule(ScheduleConfig(num_timesteps=10))
    x0 = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    res = calc_bpd_full(lambda x, t: torch.zeros_like(x), s, x0, generator=torch.Generator().manual_seed(0))
    a = s.alpha_bars[-1].item()
    closed = torch.tensor([0.5 * (-1 - math.log(1 - a) + (1 - a) + a * v * v) / LN2 for v in (-1.0, 0.0, 1.0)],
                          dtype=torch.float64)
    assert torch.allclose(res.prior_bpd, closed, rtol=1e-6) and closed.min() > 1
    assert torch.allclose(res.total_bpd, closed + res.terms.sum(1), rtol=1e-12)


def test_prior_term_is_negligible_for_the_linear_schedule():
    s = make_schedule()
    x0 = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0), torch.zeros(1, 4, 4)])
    bpd = prior_bpd(s, x0)
    a = s.alpha_bars[-1].item()
    closed = [0.5 * (-1 - math.log(1 - a) + (1 - a) + a * v * v) / LN2 for v in (-1.0, 1.0, 0.0)]
    assert bpd.tolist() == pytest.approx(closed, rel=1e-6)
    assert bpd.max().item() < 1e-4 and bpd.min().item() > 0


def test_learned_range_variance_stays_between_posterior_and_beta():
    s = make_schedule()
    T = s.num_timesteps
    t = torch.arange(T)
    like = torch.zeros(T, 1)
    lo, hi = s.posterior_log_variance_clipped.exp(), s.betas   # beta~_t (clipped at t = 1) and beta_t
    prev = None
    for v in torch.linspace(-1, 1, 21, dtype=torch.float64):
        var, log_var = model_variance(s, t, like.double(), "learned-range",
                                       torch.full((T, 1), v.item(), dtype=torch.float64))
        var = var.squeeze(1)
        assert (var >= lo * (1 - 1e-12)).all() and (var <= hi * (1 + 1e-12)).all()
        assert torch.allclose(log_var.exp().squeeze(1), var)
        if prev is not None:
            assert (var >= prev).all()                   # monotone in v
        prev = var
    ends = [model_variance(s, t, like.double(), "learned-range",
                           torch.full((T, 1), e, dtype=torch.float64))[0].squeeze(1)
            for e in (-1.0, 1.0)]
    assert torch.allclose(ends[0], lo, rtol=1e-12) and torch.allclose(ends[1], hi, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- Gaussian data

T_G = 100
SCHED_G = Schedule(linear_betas(T_G, 1e-3, 0.2))   # the linear schedule rescaled to T = 100; abar_T ~ 2e-5
M, SD = 0.1, 0.2                                    # data N(0.1, 0.2^2) per dim: P(|y - m| > 0.9) ~ 6e-6
S_EFF = SD ** 2 + BIN ** 2 / 12
"""Variance of the quantised data.  The quantised data put mass P(k) = 2/255 * (f * U)(x_k) on the grid
(f the Gaussian density, U uniform on one bin); once x_t carries noise of at least 4 bin widths (beta_1 = 1e-3:
sd 0.032) the comb is indistinguishable from the smooth density f * U (Poisson summation: ripple ~
exp(-2 pi^2 * 16) ~ 1e-137), and f * U is Gaussian with variance s^2 + bin^2/12 to the same accuracy in all
the moments used here.  So the Gaussian formulas below are exact for the quantised data for t >= 1."""


def _abar(i):
    return SCHED_G.alpha_bars[i].item()


def _var_x0_given_xt(i):
    a = _abar(i)
    return S_EFF * (1 - a) / (a * S_EFF + 1 - a)


def _gain(i):
    """E[x0 | x_t] = m + gain (x_t - sqrt(abar) m)."""
    a = _abar(i)
    return math.sqrt(a) * S_EFF / (a * S_EFF + 1 - a)


def eps_star(x, t):
    """E[eps | x_t] for x0 ~ N(m, S_EFF): Cov(eps, x_t) / Var(x_t) (x_t - E x_t)."""
    a = SCHED_G.alpha_bars[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (1 - a).sqrt() * (x - a.sqrt() * M) / (a * S_EFF + 1 - a)


def _exact_reverse_var(i):
    """Var(x_{t-1} | x_t) = beta~_t + c1^2 Var(x0 | x_t) (total variance over x0 | x_t); for the decoder
    Var(x0 | x_1) less the bin's own bin^2/12, which the decoder's integral over the bin adds back."""
    if i == 0:
        return _var_x0_given_xt(0) - BIN ** 2 / 12
    return SCHED_G.posterior_variance[i].item() + SCHED_G.posterior_mean_coef1[i].item() ** 2 * _var_x0_given_xt(i)


def _beta_tilde_2():
    """beta~_2 = (1 - abar_1) / (1 - abar_2) beta_2 (eq. 7 at t = 2)."""
    return (1 - _abar(0)) / (1 - _abar(1)) * SCHED_G.betas[1].item()


def _sigma2(i, variance):
    if variance == "fixed-large":   # beta_t, but beta~_2 for the decoder at t = 1, as in Ho et al.'s code
        return _beta_tilde_2() if i == 0 else SCHED_G.betas[i].item()
    if variance == "fixed-small":
        return SCHED_G.posterior_log_variance_clipped[i].exp().item()
    return _exact_reverse_var(i)


def _v_star():
    """The learned-range v in [-1, 1] whose variance is the exact reverse variance, per timestep."""
    out = []
    for i in range(T_G):
        lo, hi = SCHED_G.posterior_log_variance_clipped[i].item(), SCHED_G.log_betas[i].item()
        frac = (math.log(_exact_reverse_var(i)) - lo) / (hi - lo)
        assert 0 <= frac <= 1
        out.append(2 * frac - 1)
    return torch.tensor(out, dtype=torch.float64)


V_STAR = _v_star()


def model_for(variance):
    if variance != "learned-range":
        return eps_star
    return lambda x, t: torch.cat([eps_star(x, t), V_STAR[t].to(x.dtype).view(-1, 1, 1, 1).expand_as(x)], dim=1)


def expected_terms(r, variance):
    """E[L_{t-1} | x0] in bits/dim for images whose mean over dims of (x0 - m)^2 is r, (N, T), closed form.

    x0 - E[x0 | x_t] = (1 - gain sqrt(abar)) (x0 - m) - gain sqrt(1 - abar) eps, so its mean square given x0 is
    q = (1 - gain sqrt(abar))^2 r + gain^2 (1 - abar).  KL of Gaussians with means c1 (x0 - E[x0|x_t]) apart:
    1/2 (log(sigma^2 / beta~) + (beta~ + c1^2 q) / sigma^2 - 1).  L_0: -log of the bin mass, by the midpoint
    rule with its second-order correction: 1/2 log(2 pi sigma^2) + q / (2 sigma^2) - log(bin)
    - bin^2 / (24 sigma^2) (q / sigma^2 - 1); the next order is ~(bin/sigma)^4 / 2880 < 1e-5 nats here.
    """
    cols = []
    for i in range(T_G):
        a, g, s2 = _abar(i), _gain(i), _sigma2(i, variance)
        q = (1 - g * math.sqrt(a)) ** 2 * r + g * g * (1 - a)
        if i == 0:
            nats = 0.5 * math.log(2 * math.pi * s2) + q / (2 * s2) - math.log(BIN) - BIN ** 2 / (24 * s2) * (q / s2 - 1)
        else:
            bt, c1 = SCHED_G.posterior_variance[i].item(), SCHED_G.posterior_mean_coef1[i].item()
            nats = 0.5 * (math.log(s2 / bt) + (bt + c1 * c1 * q) / s2 - 1)
        cols.append(nats / LN2)
    return torch.stack(cols, dim=1)


def true_nll_bits():
    """Entropy of the quantised data per dim, in bits: the NLL of the best possible model."""
    k = torch.arange(256, dtype=torch.float64)
    lo = torch.where(k == 0, torch.tensor(-math.inf, dtype=torch.float64), GRID - 1 / 255)
    hi = torch.where(k == 255, torch.tensor(math.inf, dtype=torch.float64), GRID + 1 / 255)
    p = torch.special.ndtr((hi - M) / SD) - torch.special.ndtr((lo - M) / SD)
    p = p[p > 0]
    return -(p * p.log()).sum().item() / LN2


def gaussian_images(n, seed, shape=(1, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    y = M + SD * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return ((y + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1, g


def _r(x0):
    return ((x0 - M) ** 2).flatten(1).mean(1)


def test_closed_form_bound_sits_above_the_true_nll_by_the_expected_gap():
    """Population version (E r = S_EFF): with the exact reverse variance the only gaps are L_T and the
    decoder's higher-order bin effects (< 1e-4 bits); fixed variances pay KL(q(x_{t-1}|x_t) || p) on top."""
    h = true_nll_bits()
    prior = 0.5 * (-1 - math.log(1 - _abar(-1)) + (1 - _abar(-1)) + _abar(-1) * (S_EFF + M * M)) / LN2
    r = torch.tensor([S_EFF], dtype=torch.float64)
    bounds = {v: expected_terms(r, v).sum().item() + prior for v in ("learned-range", "fixed-large", "fixed-small")}
    assert 0 <= bounds["learned-range"] - h < 1e-4
    assert bounds["fixed-large"] - h > 0.05 and bounds["fixed-small"] - h > bounds["fixed-large"] - h


@pytest.mark.parametrize("variance", ["learned-range", "fixed-large", "fixed-small"])
def test_calc_bpd_full_matches_closed_form_and_bounds_the_true_nll(variance):
    n = 128
    x0, g = gaussian_images(n, seed=1)
    res = calc_bpd_full(model_for(variance), SCHED_G, x0, generator=g, variance=variance, batch_size=64)
    assert res.terms.shape == (n, T_G) and res.total_bpd.shape == (n,)
    assert torch.allclose(res.total_bpd, res.prior_bpd + res.terms.sum(1))
    expected = expected_terms(_r(x0), variance)
    # per image, the only randomness left is the draw of x_t; images are independent, so the standard error
    # of the mean difference is its sample sd / sqrt(n).  4 SE plus 1e-3 bits for the L_0 approximation.
    diff = res.total_bpd - (expected.sum(1) + res.prior_bpd)
    se = diff.std().item() / math.sqrt(n)
    assert abs(diff.mean().item()) < 4 * se + 1e-3, (diff.mean().item(), se)
    # term by term (5 SE: 100 comparisons, each false alarm ~6e-7)
    d = res.terms - expected
    z = d.mean(0) / (d.std(0) / math.sqrt(n))
    assert z.abs().max().item() < 5
    # the bound is above the true NLL: up to 3 SE of the mean total (x0's own sampling included)
    h = true_nll_bits()
    se_total = res.total_bpd.std().item() / math.sqrt(n)
    assert res.total_bpd.mean().item() > h - 3 * se_total
    if variance == "learned-range":   # tight: the expected gap is < 1e-4 bits
        assert abs(res.total_bpd.mean().item() - h) < 4 * se_total + 1e-3
    # the noise predictor is optimal, so its MSE given x_t is 1 - Cov^2/Var = 1 - (1-a)/(a S + 1 - a)
    a = SCHED_G.alpha_bars
    mse = 1 - (1 - a) / (a * S_EFF + 1 - a)
    assert (res.eps_mse.mean(0) - mse).abs().max().item() < 5 * (res.eps_mse.std(0) / math.sqrt(n)).max().item()


def test_quick_estimate_agrees_with_full_sum_within_its_standard_error():
    n, k = 128, 10
    x0, g = gaussian_images(n, seed=2)
    full = calc_bpd_full(eps_star, SCHED_G, x0, generator=g, variance="fixed-large")
    quick = calc_bpd_quick(eps_star, SCHED_G, x0, k, generator=g, variance="fixed-large")
    bounds = strata(T_G, k)
    assert int(quick.stratum_sizes.sum()) == T_G - 1 and bounds[0] == 1 and bounds[-1] == T_G
    assert ((quick.t >= bounds[:-1]) & (quick.t < bounds[1:])).all()
    assert strata(T_G, k, "uniform").tolist() == [1, 11, 21, 31, 41, 50, 60, 70, 80, 90, 100]
    for kk in (1, 5, 50, 99):
        b = strata(1000, kk)
        assert b[0] == 1 and b[-1] == 1000 and (b[1:] > b[:-1]).all() and len(b) == kk + 1
    closed = expected_terms(_r(x0), "fixed-large").sum(1) + full.prior_bpd
    var_full = (full.total_bpd - closed).var().item()      # the full sum's own draw-of-x_t noise per image
    se = math.sqrt((quick.stderr.pow(2).mean().item() + var_full) / n)
    assert abs(quick.total_bpd.mean().item() - full.total_bpd.mean().item()) < 3 * se
    tolerance = 3 * quick.stderr.pow(2).mean().sqrt().item() / math.sqrt(n) + 1e-3
    assert abs(quick.total_bpd.mean().item() - closed.mean().item()) < tolerance


def test_quick_standard_error_is_calibrated_on_one_image():
    """256 independent quick estimates of the same image: their spread should not exceed the reported SE
    (the successive-difference estimator is conservative), nor be far below it.  The sample sd of 256 draws
    is within ~10% of the truth (SE of an sd ~ 1/sqrt(2n) = 4.4%, 2.3 sigma)."""
    x0, g = gaussian_images(1, seed=3)
    reps = x0.expand(256, -1, -1, -1).contiguous()
    quick = calc_bpd_quick(eps_star, SCHED_G, reps, 10, generator=g, variance="fixed-large")
    spread = quick.total_bpd.std().item()
    reported = quick.stderr.pow(2).mean().sqrt().item()
    assert 0.9 * spread < reported < 4 * spread
    closed = expected_terms(_r(x0), "fixed-large").sum().item() + prior_bpd(SCHED_G, x0).item()
    assert abs(quick.total_bpd.mean().item() - closed) < 3 * spread / 16 + 1e-3


def _kl_of_equal_means_bits(i):
    """L_{t-1} (0-based i = t - 1 >= 1) when mu_theta = mu~: KL(N(mu, beta~_t) || N(mu, beta_t)) =
    1/2 (log(beta_t / beta~_t) + beta~_t / beta_t - 1) nats, with beta_t = 1 - abar_t / abar_{t-1} and
    beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7), in bits."""
    a, ap = _abar(i), _abar(i - 1)
    beta = 1 - a / ap
    beta_tilde = (1 - ap) / (1 - a) * beta
    return 0.5 * (math.log(beta / beta_tilde) + beta_tilde / beta - 1) / LN2


@pytest.mark.parametrize("k", [2, 3, 10])
def test_quick_standard_error_formula_on_known_terms(k):
    """A predictor that knows x0 (eps = the noise actually drawn) makes mu_theta = mu~ (eq. 11 against eq. 7), so
    with fixed-large variance each KL term is a function of t alone (:func:`_kl_of_equal_means_bits`).  Then the
    quick estimate is prior + L_0 + sum_h Y_h with Y_h = n_h L(t_h) at the drawn t_h, and its variance the
    successive-difference estimator k / (2 (k - 1)) sum_{h=1}^{k-1} (Y_{h+1} - Y_h)^2 (Cochran 1977, collapsed
    strata), written out here: the factor is 1 for k = 2, 3/4 for k = 3, 5/9 for k = 10.  The float32 cast of the
    predictor's output leaves a mean mismatch worth < 1e-14 bits (measured): atol 1e-12, rtol 1e-6."""
    x0, g = gaussian_images(5, seed=5, shape=(1, 4, 4))

    def oracle(x_t, t):
        a = SCHED_G.alpha_bars[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    quick = calc_bpd_quick(oracle, SCHED_G, x0, k, generator=g, variance="fixed-large")
    L = torch.tensor([[_kl_of_equal_means_bits(i) for i in row] for row in quick.t.tolist()], dtype=torch.float64)
    assert torch.allclose(quick.terms, L, rtol=1e-6, atol=1e-12)
    sizes = (strata(T_G, k)[1:] - strata(T_G, k)[:-1]).double()
    Y = L * sizes
    var = torch.stack([k / (2 * (k - 1)) * sum((row[h + 1] - row[h]) ** 2 for h in range(k - 1)) for row in Y])
    assert torch.allclose(quick.stderr, var.sqrt(), rtol=1e-6)
    assert torch.allclose(quick.total_bpd, quick.prior_bpd + quick.decoder_bpd + Y.sum(1), rtol=1e-9)
    assert quick.stderr.std() > 0.01 * quick.stderr.mean()          # the draws differ between images
    if k == 2:
        one = calc_bpd_quick(oracle, SCHED_G, x0, 1, generator=g, variance="fixed-large")
        assert one.stderr.isnan().all()                              # one stratum: no variance estimate


@pytest.mark.parametrize("variance", ["fixed-large", "fixed-small"])
def test_decoder_variance_is_beta_tilde_2_for_both_fixed_variances(variance):
    """L_0 = -log p(x_0 | x_1), eq. 13.  At t = 1, abar_0 = 1 makes eq. 7's coefficients 1 and 0, so mu_theta =
    x0_pred = (x_1 - sqrt(1 - abar_1) eps) / sqrt(abar_1); Ho et al.'s code gives the decoder the variance
    beta~_2 (eq. 7 at t = 2) for both fixed choices, not beta_1 (here 7.5e-4 against 1e-3).  Interior levels,
    each bin's mass Phi((x + 1/255 - mu) / sigma) - Phi((x - 1/255 - mu) / sigma) written out in float64 (masses
    ~0.1: no cancellation), so the library's log-space evaluation must agree to 1e-9."""
    g = torch.Generator().manual_seed(7)
    x0 = GRID[torch.randint(40, 216, (3, 1, 4, 4), generator=g)]
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    a1 = _abar(0)
    x1 = math.sqrt(a1) * x0 + math.sqrt(1 - a1) * noise
    eps = noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)   # an imperfect predictor
    mu = (x1 - math.sqrt(1 - a1) * eps) / math.sqrt(a1)

    def l0_bits(var):
        sd = math.sqrt(var)
        mass = torch.special.ndtr((x0 + BIN / 2 - mu) / sd) - torch.special.ndtr((x0 - BIN / 2 - mu) / sd)
        return -mass.log().flatten(1).mean(1) / LN2

    got = vlb_terms(SCHED_G, eps, x0, x1, torch.zeros(3, dtype=torch.long), variance)
    want = l0_bits(_beta_tilde_2())
    assert torch.allclose(got, want, rtol=1e-9, atol=0)
    assert (l0_bits(SCHED_G.betas[0].item()) - want).abs().min() > 0.01    # beta_1 would be told apart


# ---------------------------------------------------------------------------------------------- training losses

def _toy_batch(variance, seed=0, n=16):
    x0, g = gaussian_images(n, seed=seed, shape=(1, 4, 4))
    x0 = x0.float()
    t = torch.randint(0, T_G, (n,), generator=g)
    t[0] = 0
    noise = torch.randn(x0.shape, generator=g)
    x_t = (SCHED_G.sqrt_alpha_bars[t].float().view(-1, 1, 1, 1) * x0
           + SCHED_G.sqrt_one_minus_alpha_bars[t].float().view(-1, 1, 1, 1) * noise)
    ch = 2 if variance == "learned-range" else 1
    out = (0.3 * torch.randn(n, ch, 4, 4, generator=g)).requires_grad_()
    return x0, t, noise, x_t, out


def test_hybrid_with_lambda_zero_is_exactly_l_simple():
    x0, t, noise, x_t, out = _toy_batch("learned-range")
    h0 = hybrid_loss(SCHED_G, out, noise, x0, x_t, t, "learned-range", lam=0.0)
    per_image = ((out[:, :1] - noise) ** 2).flatten(1).mean(1)
    assert torch.equal(h0, per_image)
    assert h0.mean().item() == pytest.approx(loss_simple(out, noise, "learned-range").item(), rel=1e-6)
    (g0,) = torch.autograd.grad(h0.mean(), out)
    assert torch.equal(g0[:, 1:], torch.zeros_like(g0[:, 1:]))      # the variance half learns nothing


def test_hybrid_trains_variance_only_through_l_vlb():
    x0, t, noise, x_t, out = _toy_batch("learned-range")
    (g0,) = torch.autograd.grad(hybrid_loss(SCHED_G, out, noise, x0, x_t, t, "learned-range", lam=0.0).mean(), out)
    h = hybrid_loss(SCHED_G, out, noise, x0, x_t, t, "learned-range", lam=0.001)
    vlb = loss_vlb(SCHED_G, out, x0, x_t, t, "learned-range")
    assert torch.allclose(h, h.detach() * 0 + ((out[:, :1] - noise) ** 2).flatten(1).mean(1) + 0.001 * vlb, rtol=1e-6)
    (g,) = torch.autograd.grad(h.mean(), out)
    assert torch.equal(g[:, :1], g0[:, :1])                         # stop-gradient on the mean
    assert g[:, 1:].abs().sum() > 0
    (gv,) = torch.autograd.grad(vlb.mean(), out)                     # plain L_vlb trains the mean too
    assert gv[:, :1].abs().sum() > 0
    assert torch.allclose(vlb, T_G * vlb_terms(SCHED_G, out, x0, x_t, t, "learned-range"))


def test_importance_sampler_warm_up_probabilities_and_weights():
    T = 5
    s = ImportanceSampler(T, history=3, uniform_prob=0.1)
    g = torch.Generator().manual_seed(0)
    t, w = s.sample(8, g)
    assert torch.equal(w, torch.ones(8)) and not s.warmed_up
    hist = {0: [1, 2, 3, 9], 1: [0.5] * 3, 2: [4, 4, 4], 3: [1, 1, 1], 4: [0, 0, 2]}
    for i, losses in hist.items():
        for x in losses:
            s.update(torch.tensor([i]), torch.tensor([float(x)]))
    assert s.warmed_up
    rms = [math.sqrt(sum(x * x for x in v[-3:]) / 3) for v in hist.values()]   # t=0 keeps its last 3: 2, 3, 9
    p_ref = [0.9 * r / sum(rms) + 0.1 / T for r in rms]
    assert s.probs().tolist() == pytest.approx(p_ref, rel=1e-12)
    p = s.probs()
    t, w = s.sample(200_000, g)
    freq = torch.bincount(t, minlength=T).double() / 200_000
    assert (freq - p).abs().max().item() < 5 * math.sqrt(0.25 / 200_000)   # 5 binomial SE
    assert torch.allclose(w.double(), 1 / (T * p[t]), rtol=1e-6)
    # unbiased: the weighted draws estimate the uniform mean of any per-timestep loss (5 Monte Carlo SE)
    L = torch.tensor([3.0, -1.0, 2.5, 7.0, 0.2], dtype=torch.float64)
    est = w.double() * L[t]
    assert abs(est.mean().item() - L.mean().item()) < 5 * est.std().item() / math.sqrt(len(est))
    # resume: the same state and generator give the same draws
    s2 = ImportanceSampler(T, history=3)
    s2.load_state_dict(s.state_dict())
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(s.sample(50, ga)[0], s2.sample(50, gb)[0])
    with pytest.raises(ValueError):
        ImportanceSampler(T + 1, history=3).load_state_dict(s.state_dict())


def test_importance_weighted_l_vlb_is_unbiased_for_the_bound():
    """E_{t~p}[w_t T L_{t-1}] = sum_t L_{t-1}: feed the sampler the closed-form terms, then estimate the
    bound (minus L_T) from one sampled t per image.  With p close to L_t the spread is small; 5 SE."""
    n = 2048
    x0, g = gaussian_images(n, seed=4, shape=(1, 4, 4))
    terms = expected_terms(torch.tensor([S_EFF], dtype=torch.float64), "fixed-large")[0]
    sampler = ImportanceSampler(T_G)
    for _ in range(10):
        sampler.update(torch.arange(T_G), terms * T_G)
    t, w = sampler.sample(n, g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = (SCHED_G.sqrt_alpha_bars[t].view(-1, 1, 1, 1) * x0
           + SCHED_G.sqrt_one_minus_alpha_bars[t].view(-1, 1, 1, 1) * noise)
    est = w.double() * loss_vlb(SCHED_G, eps_star(x_t, t), x0, x_t, t, "fixed-large")
    closed = expected_terms(_r(x0), "fixed-large").sum(1)
    se = (est - closed).std().item() / math.sqrt(n)
    assert abs((est - closed).mean().item()) < 5 * se
    assert se < 0.05           # and much tighter than uniform sampling would give (L_0 alone: ~0.4)


def test_training_objective_records_history_and_applies_weights():
    x0, t, noise, x_t, out = _toy_batch("learned-range")
    obj = TrainingVLB(SCHED_G, "hybrid", "learned-range", 0.001, importance_sampling=True)
    w = torch.linspace(0.5, 2.0, len(t))
    loss = obj.loss(out, noise, x0, x_t, t, w)
    per = obj.per_image(out, noise, x0, x_t, t)
    assert loss.item() == pytest.approx((per * w).mean().item(), rel=1e-6)
    assert int(obj.importance.counts.sum()) == len(t)
    state = obj.state_dict()
    other = TrainingVLB(SCHED_G, "hybrid", "learned-range", 0.001, importance_sampling=True)
    other.load_state_dict(state)
    assert torch.equal(other.importance.losses, obj.importance.losses)
    with pytest.raises(ValueError):
        TrainingVLB(SCHED_G, "simple", "fixed-large")
