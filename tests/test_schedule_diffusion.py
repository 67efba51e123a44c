"""Closed-form checks of the schedule (eq. 4) and the forward/posterior Gaussians (eqs. 4, 6, 7, 11, 14)."""
import math

import pytest
import torch

from ddpm.core.diffusion import (
    loss_simple,
    model_variance,
    p_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_posterior,
    q_sample,
)
from ddpm.core.schedule import (
    Schedule,
    ScheduleConfig,
    cosine_betas,
    extract,
    linear_betas,
    make_schedule,
)


def test_alpha_bar_is_running_product_of_alphas():
    s = make_schedule()
    running, expected = 1.0, []
    for beta in s.betas.tolist():  # independent python-float product
        running *= 1.0 - beta
        expected.append(running)
    assert torch.allclose(s.alpha_bars, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert s.betas.dtype == torch.float64 and s.num_timesteps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alpha_bars_prev[0] == 1 and torch.equal(s.alpha_bars_prev[1:], s.alpha_bars[:-1])


def test_cosine_schedule_matches_its_formula():
    T, sft = 1000, 0.008
    betas = cosine_betas(T, sft)
    s = Schedule(betas)
    f = lambda t: math.cos((t / T + sft) / (1 + sft) * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 10, 500, 900):  # abar at paper time t = i + 1 is f(t)/f(0) (uncapped there)
        assert s.alpha_bars[i].item() == pytest.approx(f(i + 1) / f(0), rel=1e-10)
    assert betas.max().item() <= 0.999 and betas[-1].item() == pytest.approx(0.999)


def test_posterior_coefficients_against_eq7():
    s = make_schedule(ScheduleConfig(num_timesteps=50, beta_end=0.2))
    for i in (1, 7, 49):
        b, a, ab, abp = s.betas[i], s.alphas[i], s.alpha_bars[i], s.alpha_bars[i - 1]
        assert s.posterior_variance[i].item() == pytest.approx(((1 - abp) / (1 - ab) * b).item(), rel=1e-12)
        assert s.posterior_mean_coef1[i].item() == pytest.approx((abp.sqrt() * b / (1 - ab)).item(), rel=1e-12)
        assert s.posterior_mean_coef2[i].item() == pytest.approx((a.sqrt() * (1 - abp) / (1 - ab)).item(), rel=1e-12)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_extract_shapes_and_dtype():
    s = make_schedule()
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    out = extract(s.betas, torch.tensor([0, 5, 999]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out[2, 0, 0, 0].item() == pytest.approx(0.02)


def test_extract_copies_a_schedule_to_another_device_once():
    """On a GPU the coefficients must not be re-copied from the host at every step (each copy is a host sync).
    The meta device stands in for the GPU: a second call must reuse the first call's copy, also when that copy
    was first made under inference mode and is then used with autograd on."""
    s = make_schedule()
    t = torch.tensor([0, 5], device="meta")
    with torch.inference_mode():
        first = extract(s.betas, t, torch.empty(2, 1, device="meta"))
    assert first.device.type == "meta" and first.shape == (2, 1)
    copy = s.betas._device_copies[torch.device("meta")]
    assert not copy.is_inference()
    extract(s.betas, t, torch.empty(2, 3, 4, device="meta", requires_grad=True))
    assert s.betas._device_copies[torch.device("meta")] is copy
    assert not hasattr(make_schedule().betas, "_device_copies")  # a new schedule starts with none


def test_q_sample_monte_carlo_moments():
    """x_t ~ N(sqrt(abar) x0, (1 - abar) I).  With n = 200,000 draws per timestep the standard error of the mean
    is sqrt(1-abar)/sqrt(n) <= 2.3e-3, and of the variance about sqrt(2/n)(1-abar) <= 3.2e-3; tolerance 5 SE."""
    s = make_schedule()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for i in (0, 100, 999):
        x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
        t = torch.full((n,), i)
        noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
        xt = q_sample(s, x0, t, noise)
        ab = s.alpha_bars[i].item()
        se_mean, se_var = math.sqrt((1 - ab) / n), math.sqrt(2 / n) * (1 - ab)
        assert abs(xt.mean().item() - math.sqrt(ab) * 0.7) < 5 * se_mean
        assert abs(xt.var().item() - (1 - ab)) < 5 * se_var


def test_q_sample_composes_single_steps():
    """Eq. 4 collapses t Gaussian steps x_t = sqrt(1-beta_t) x_{t-1} + sqrt(beta_t) z into one: iterating the single
    steps gives mean prod sqrt(alpha) x0 and variance 1 - prod alpha, which is what q_sample uses."""
    s = make_schedule(ScheduleConfig(num_timesteps=30, beta_end=0.1))
    mean, var = 1.0, 0.0
    for i in range(30):
        mean = math.sqrt(1 - s.betas[i].item()) * mean
        var = (1 - s.betas[i].item()) * var + s.betas[i].item()
        assert mean == pytest.approx(s.sqrt_alpha_bars[i].item(), rel=1e-12)
        assert var == pytest.approx(1 - s.alpha_bars[i].item(), rel=1e-10)


def test_q_posterior_equals_bayes_rule():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): a product of Gaussians in x_{t-1}.  Precision adds:
    1/var = alpha_t/beta_t + 1/(1-abar_{t-1});
    mean = var (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x0 / (1-abar_{t-1}))."""
    s = make_schedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    xt = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    mean, var, log_var = q_posterior(s, x0, xt, t)
    a, b, abp = s.alphas[t], s.betas[t], s.alpha_bars_prev[t]
    prec = a / b + 1 / (1 - abp)
    var_ref = (1 / prec).view(-1, 1, 1, 1)
    mean_ref = var_ref * (a.sqrt().view(-1, 1, 1, 1) * xt / b.view(-1, 1, 1, 1)
                          + abp.sqrt().view(-1, 1, 1, 1) * x0 / (1 - abp).view(-1, 1, 1, 1))
    assert torch.allclose(var, var_ref, rtol=1e-10)
    assert torch.allclose(mean, mean_ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(log_var, var_ref.log(), rtol=1e-10)


def test_x0_eps_inversions_and_eq11_mean():
    s = make_schedule()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 250, 700, 999])
    xt = q_sample(s, x0, t, eps)
    assert torch.allclose(predict_x0_from_eps(s, xt, t, eps), x0, atol=1e-8)
    assert torch.allclose(predict_eps_from_x0(s, xt, t, x0), eps, atol=1e-8)
    # with the true eps, mu_theta (eq. 11) equals the true posterior mean (eq. 7)
    out = p_mean_variance(s, eps, xt, t, variance="fixed-small")
    post_mean, _, _ = q_posterior(s, x0, xt, t)
    assert torch.allclose(out.mean, post_mean, atol=1e-8)
    # eq. 11 written out by hand
    b, a, ab = [c[t].view(-1, 1, 1, 1) for c in (s.betas, s.alphas, s.alpha_bars)]
    assert torch.allclose(out.mean, (xt - b / (1 - ab).sqrt() * eps) / a.sqrt(), atol=1e-10)
    # clipping leaves in-range predictions alone ...
    x0_in = x0.clamp(-0.9, 0.9)
    xt_in = q_sample(s, x0_in, t, eps)
    kept = p_mean_variance(s, eps, xt_in, t, clip_denoised=True)
    assert torch.allclose(kept.mean, p_mean_variance(s, eps, xt_in, t).mean, atol=1e-10)
    # ... and otherwise takes eq. 7's posterior mean at the clamped x0, written out by hand here
    big = p_mean_variance(s, eps * 50, xt, t, clip_denoised=True)
    x0_c = ((xt - (1 - ab).sqrt() * eps * 50) / ab.sqrt()).clamp(-1, 1)
    ab_prev = torch.where(t.view(-1, 1, 1, 1) > 0, s.alpha_bars[(t - 1).clamp(min=0)].view(-1, 1, 1, 1), 1.0)
    mean7 = (ab_prev.sqrt() * b / (1 - ab)) * x0_c + (a.sqrt() * (1 - ab_prev) / (1 - ab)) * xt
    assert torch.allclose(big.pred_x0, x0_c, atol=1e-12)
    assert big.pred_x0.abs().max() == 1 and torch.allclose(big.mean, mean7, atol=1e-10)


def test_model_variance_choices():
    s = make_schedule()
    x = torch.zeros(3, 1, 2, 2)
    t = torch.tensor([0, 10, 999])
    large, _ = model_variance(s, t, x, "fixed-large")
    small, _ = model_variance(s, t, x, "fixed-small")
    assert torch.allclose(large[1:, 0, 0, 0], s.betas[t[1:]].float())
    # at t = 1 fixed-large takes beta~_2 = beta_2 (1 - abar_1) / (1 - abar_2), as Ho et al.'s code does for L_0
    b1, b2 = 1e-4, 1e-4 + (0.02 - 1e-4) / 999
    tilde_b2 = b2 * b1 / (1 - (1 - b1) * (1 - b2))
    assert large[0, 0, 0, 0].item() == pytest.approx(tilde_b2, rel=1e-6)
    assert tilde_b2 == pytest.approx(5.4532e-5, rel=1e-4)
    assert torch.allclose(small[1:, 0, 0, 0], s.posterior_variance[t[1:]].float())
    lo, _ = model_variance(s, t, x, "learned-range", v=-torch.ones_like(x))
    hi, _ = model_variance(s, t, x, "learned-range", v=torch.ones_like(x))
    # learned-range interpolates between beta~_t and beta_t itself at every t (improved-diffusion's max_log)
    assert torch.allclose(lo, small) and torch.allclose(hi[:, 0, 0, 0], s.betas[t].float())
    with pytest.raises(ValueError):
        model_variance(s, t, x, "nonsense")


def test_loss_simple_is_mse_and_ignores_variance_channels():
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 1, 4, 4, generator=g)
    out = torch.randn(2, 2, 4, 4, generator=g)
    assert loss_simple(out[:, :1], noise).item() == pytest.approx(((out[:, :1] - noise) ** 2).mean().item(), rel=1e-6)
    assert loss_simple(out, noise, "learned-range").item() == pytest.approx(loss_simple(out[:, :1], noise).item())


def test_functions_do_not_modify_inputs():
    s = make_schedule()
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([3, 900])
    copies = (x0.clone(), eps.clone())
    xt = q_sample(s, x0, t, eps)
    q_posterior(s, x0, xt, t)
    p_mean_variance(s, eps, xt, t, clip_denoised=True)
    assert torch.equal(x0, copies[0]) and torch.equal(eps, copies[1])


def test_schedule_config_validation_and_linear():
    with pytest.raises(ValueError):
        ScheduleConfig(kind="exp")
    with pytest.raises(ValueError):
        ScheduleConfig(beta_start=0.1, beta_end=0.01)
    assert torch.allclose(linear_betas(3, 0.1, 0.3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    again = Schedule.from_alpha_bars(make_schedule().alpha_bars)
    assert torch.allclose(again.betas, make_schedule().betas, rtol=1e-9)


def test_schedules_that_destroy_x0_completely_are_refused():
    """beta = 1 makes abar_T = 0: x_0 could not be recovered from any x_t and every 1/sqrt(abar) is infinite."""
    from ddpm.core.schedule import Schedule
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Schedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="max_beta"):
        ScheduleConfig(kind="cosine", max_beta=1.0)
    with pytest.raises(ValueError, match="cosine_s"):
        ScheduleConfig(kind="cosine", cosine_s=-0.1)


def _cosine_betas_by_hand(T, s, cap):
    """Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2), and
    beta_t = min(cap, 1 - abar(t)/abar(t-1)) for t = 1..T, in python floats."""
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    return [min(cap, 1 - (f[t] / f[0]) / (f[t - 1] / f[0])) for t in range(1, T + 1)]


def test_cosine_schedule_defaults_are_the_papers_s_and_cap():
    """The cosine schedule as configured by default, and cosine_betas' own defaults: s = 0.008 and beta capped at
    0.999 (Nichol & Dhariwal 2021, Sec. 3.2).  abar_t of the built schedule equals f(t)/f(0) until the cap bites."""
    T = 1000
    want = torch.tensor(_cosine_betas_by_hand(T, 0.008, 0.999), dtype=torch.float64)
    s = make_schedule(ScheduleConfig(kind="cosine"))
    assert torch.allclose(s.betas, want, rtol=1e-10, atol=0)
    assert torch.allclose(cosine_betas(T), want, rtol=1e-10, atol=0)
    assert s.betas[-1].item() == 0.999 and s.betas[-2].item() < 0.999   # only beta_T is capped
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alpha_bars[T // 2 - 1].item() == pytest.approx(f(T // 2) / f(0), rel=1e-10)
    # the offset matters where it was meant to: beta_1 = 1 - f(1)/f(0) ~ 4e-5, far below s = 0.08's ~ 4e-4
    assert s.betas[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-10) and s.betas[0].item() < 5e-5


def test_cosine_schedule_takes_its_configured_offset_and_cap():
    """Non-default s and max_beta reach cosine_betas through the config; a low cap clips every beta above it."""
    T, s_, cap = 50, 0.02, 0.2
    want = torch.tensor(_cosine_betas_by_hand(T, s_, cap), dtype=torch.float64)
    got = make_schedule(ScheduleConfig(kind="cosine", num_timesteps=T, cosine_s=s_, max_beta=cap)).betas
    assert torch.allclose(got, want, rtol=1e-10, atol=0)
    assert torch.allclose(cosine_betas(T, s_, cap), want, rtol=1e-10, atol=0)
    assert (got == cap).sum().item() >= 3 and got[0].item() < cap          # the cap really clips several


def test_linear_schedule_takes_its_configured_ends():
    """beta_i = beta_1 + (beta_T - beta_1) (i - 1) / (T - 1), written out for a non-default config."""
    T, b1, bT = 11, 1e-3, 0.051
    got = make_schedule(ScheduleConfig(num_timesteps=T, beta_start=b1, beta_end=bT)).betas
    assert got.tolist() == pytest.approx([b1 + (bT - b1) * i / (T - 1) for i in range(T)], rel=1e-12)
    assert got[0].item() == pytest.approx(b1, rel=1e-15) and got[-1].item() == pytest.approx(bT, rel=1e-15)
