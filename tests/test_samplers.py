"""Tests of the samplers (ddpm.core.samplers) and of respacing (ddpm.core.respace).

The workhorse is a Gaussian data distribution x0 ~ N(m, s^2 I), whose optimal noise predictor is known
exactly: E[eps | x_t] = sqrt(1 - abar_t) (x_t - sqrt(abar_t) m) / (abar_t s^2 + 1 - abar_t).  Every sampler
driven by it is an affine map of Gaussians, so the exact mean and variance of what it returns follow from a
scalar recursion (written out below from the papers' equations, independently of the samplers' code), and
its probability-flow ODE has a closed form (it keeps the z-score of the Gaussian marginal fixed).
"""
import math

import numpy as np
import pytest
import torch

from ddpm.core.diffusion import VARIANCE_TYPES
from ddpm.core.respace import (
    SPACINGS,
    log_snr,
    original_time_model,
    respace,
    timestep_sequence,
)
from ddpm.core.samplers import (
    SAMPLERS,
    Chain,
    PerSampleNoise,
    ancestral_sample,
    ddim_decode,
    ddim_encode,
    ddim_sample,
    ddim_sigma,
    dpm_solver_2m_sample,
    run_sampler,
)
from ddpm.core.schedule import Schedule, ScheduleConfig, make_schedule


def with_chain(sampler_fn, *args, every, **kw):
    """Run ``sampler_fn`` with a :class:`Chain` observer; returns (x_0, frames)."""
    chain = Chain(every)
    return sampler_fn(*args, on_step=chain, **kw), chain.frames


T = 100
# The paper's linear schedule rescaled to T = 100 steps (beta x 1000 / T, as improved-diffusion does), so that
# abar_T = 2e-5 and x_T ~ N(0, I) is as good a start as with T = 1000.
SCHED = make_schedule(ScheduleConfig(num_timesteps=T, beta_start=1e-3, beta_end=0.2))
D = 16                                                  # dimensions per sample: independent, so they pool
M = torch.linspace(-0.8, 0.8, D, dtype=torch.float64)   # the data mean m, one value per dimension
S = 0.5                                                 # the data standard deviation s


def gaussian_eps(schedule: Schedule, m=M, s=S):
    """The exact noise predictor of x0 ~ N(m, s^2 I); t is an original 0-based index."""
    abar = schedule.alpha_bars

    def model(x, t):
        a = abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * m) / (a * s ** 2 + 1 - a)).to(x.dtype)
    return model


def wiggly_eps(x, t):
    """A nonlinear, elementwise, batch-independent stand-in for a network (large enough to trigger clipping)."""
    return 1.5 * torch.sin(1.3 * x + 0.05 * t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype))


class Recorder:
    """Wraps a model and keeps the timesteps it was called with."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t):
        assert t.dtype == torch.long and (t == t[0]).all()
        self.calls.append(int(t[0]))
        return self.model(x, t)


# ----------------------------------------------------------------------------------------------- respacing

@pytest.mark.parametrize("spacing", SPACINGS)
def test_timestep_sequence_is_valid_for_every_step_count(spacing):
    sched = make_schedule(ScheduleConfig(num_timesteps=40, beta_start=2.5e-3, beta_end=0.5))
    for steps in range(1, 41):
        ts = timestep_sequence(sched, steps, spacing)
        assert ts.dtype == torch.long and len(ts) == steps
        assert int(ts[0]) >= 0 and int(ts[-1]) <= 39 and bool((ts[1:] > ts[:-1]).all())
    assert torch.equal(timestep_sequence(sched, 40, spacing), torch.arange(40))
    assert timestep_sequence(sched, 1, spacing).tolist() == [39]  # one step starts from pure noise
    with pytest.raises(ValueError):
        timestep_sequence(sched, 41, spacing)


def test_spacings_match_their_reference_formulas():
    # "uniform" and "quadratic" are the DDIM code's sequences (Song et al. 2021, App. D.2), "trailing" the one
    # of Lin et al. 2024, Table 2; rewritten here with numpy from those definitions.
    sched = make_schedule()
    for steps in (10, 20, 50, 100):
        ref = np.arange(0, 1000, 1000 // steps)
        assert timestep_sequence(sched, steps, "uniform").tolist() == ref.tolist()
        ref = np.sort(np.round(np.arange(1000, 0, -1000 / steps)).astype(int) - 1)
        assert timestep_sequence(sched, steps, "trailing").tolist() == ref.tolist()
    for steps in (5, 10, 20, 28):   # up to sqrt(0.8 T) = 28.3 the code's quadratic sequence has no repeats
        ref = [int(v) for v in np.linspace(0, np.sqrt(1000 * 0.8), steps) ** 2]
        assert timestep_sequence(sched, steps, "quadratic").tolist() == ref


def test_logsnr_spacing_picks_the_index_nearest_to_uniform_lambda():
    sched = make_schedule()
    lam = log_snr(sched.alpha_bars)
    for steps in (5, 10, 15):   # coarse enough that no two targets share an index
        ts = timestep_sequence(sched, steps, "logsnr")
        goal = torch.linspace(lam[0].item(), lam[-1].item(), steps, dtype=torch.float64)
        assert ts[0] == 0 and ts[-1] == 999
        for t, g in zip(ts.tolist(), goal):
            nearest = int((lam - g).abs().argmin())
            assert t == nearest


def test_log_snr_closed_form():
    abar = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    assert torch.allclose(log_snr(abar), torch.log(abar.sqrt() / (1 - abar).sqrt()), rtol=0, atol=1e-15)


def test_respacing_every_step_reproduces_the_schedule():
    # beta'_i = 1 - abar_i / abar_{i-1} recomputes beta_i from a cumulative product: float64 round-off only
    # (relative 1e-16 per product term, at most 1e-13 after 1000 terms; the smallest beta is 1e-4, so 1e-12
    # relative on beta and on every term derived from it).
    for sched in (make_schedule(), make_schedule(ScheduleConfig(kind="cosine", num_timesteps=200)), SCHED):
        r = respace(sched, torch.arange(sched.num_timesteps))
        for name in ("betas", "alpha_bars", "alpha_bars_prev", "posterior_variance", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2", "log_betas", "fixed_large_log_variance"):
            a, b = getattr(r, name), getattr(sched, name)
            assert torch.allclose(a, b, rtol=1e-11, atol=1e-14), name


def test_respaced_schedule_on_a_subset():
    ts = torch.tensor([0, 3, 10, 31, 60, 99])
    r = respace(SCHED, ts)
    abar = SCHED.alpha_bars[ts]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    assert torch.allclose(torch.cumprod(1 - r.betas, 0), abar, rtol=1e-12)          # same marginals q(x_t | x_0)
    assert torch.allclose(r.betas, 1 - abar / prev, rtol=1e-12)                      # Nichol & Dhariwal, Sec. 4
    assert torch.allclose(r.posterior_variance, (1 - prev) / (1 - abar) * (1 - abar / prev), rtol=1e-12)
    # eq. 16 with eta = 1 is the respaced posterior variance beta~'
    sig2 = torch.tensor([ddim_sigma(a, p, 1.0) ** 2 for a, p in zip(abar.tolist(), prev.tolist())], dtype=torch.float64)
    assert torch.allclose(sig2, r.posterior_variance, rtol=1e-12)
    with pytest.raises(ValueError):
        respace(SCHED, torch.tensor([3, 3, 5]))
    with pytest.raises(ValueError):
        respace(SCHED, torch.tensor([0, 100]))


def test_original_time_model_maps_indices():
    ts = torch.tensor([2, 5, 9])
    seen = []
    wrapped = original_time_model(lambda x, t: seen.append(t.tolist()) or x, ts)
    wrapped(torch.zeros(2, 1), torch.tensor([1, 1]))
    assert seen == [[5, 5]]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_network_sees_the_original_timesteps(sampler, spacing):
    rec = Recorder(wiggly_eps)
    run_sampler(rec, SCHED, PerSampleNoise([0, 1]), (3,), sampler=sampler, steps=7, spacing=spacing)
    assert rec.calls == timestep_sequence(SCHED, 7, spacing).flip(0).tolist()
    rec = Recorder(wiggly_eps)
    run_sampler(rec, SCHED, PerSampleNoise([0]), (3,), sampler=sampler)            # steps=None: all T
    assert rec.calls == list(range(T - 1, -1, -1))


def test_learned_range_variance_under_respacing():
    # A network with eps = 0 and a constant v: x_{k-1} = x_k / sqrt(alpha'_k) + sigma_k z_k, so sigma_k can be read
    # off the chain given the z's, which come from the same seeds.  Nichol & Dhariwal eq. 15 on the respaced
    # schedule: log sigma^2 = f log beta' + (1 - f) log beta~', f = (v + 1) / 2.
    ts = timestep_sequence(SCHED, 6, "uniform")
    r = respace(SCHED, ts)
    v = 0.3
    model = lambda x, t: torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
    x0, chain = with_chain(ancestral_sample, model, SCHED, PerSampleNoise([11]), (2, 3), variance="learned-range",
                                 clip_denoised=False, timesteps=ts, every=1)
    noise = PerSampleNoise([11])
    noise.randn((2, 3))                                         # x_T
    f = (v + 1) / 2
    xs = [x for _, x in chain]
    for j, k in enumerate(range(len(ts) - 1, 0, -1)):
        z = noise.randn((2, 3))
        want = math.exp(0.5 * (f * math.log(r.betas[k]) + (1 - f) * math.log(r.posterior_variance[k])))
        got = (xs[j + 1] - xs[j] / math.sqrt(1 - r.betas[k])) / z
        assert torch.allclose(got, torch.full_like(got, want), rtol=1e-4), k   # float32 differences of O(1) numbers
    assert torch.allclose(x0, xs[-2] / math.sqrt(1 - r.betas[0]))            # no noise at the last step


# ---------------------------------------------------------------------------------- DDIM vs ancestral DDPM

def test_ddim_sigma_is_eq_16_and_linear_in_eta():
    """sigma_t(eta) = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}) (Song et al. 2021,
    eq. 16): eta scales the standard deviation itself, so eta = 0.5 gives a quarter of the posterior variance."""
    for a, ap in [(0.5, 0.9), (0.02, 0.3), (2e-5, 1e-4), (0.999, 1.0)]:
        base = math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
        for eta in (0.0, 0.25, 0.5, 1.0):
            assert ddim_sigma(a, ap, eta) == pytest.approx(eta * base, rel=1e-13, abs=0), (a, ap, eta)
    assert ddim_sigma(0.5, 0.9, 0.5) ** 2 == pytest.approx(1 / 45, rel=1e-13)   # 1/4 * (0.1 / 0.5) * (1 - 5/9)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [None, 13])
def test_ddim_eta1_is_ancestral_with_posterior_variance(clip, steps):
    # With sigma_t^2 = beta~_t (eq. 16 at eta = 1), eq. 12 of Song et al. equals Algorithm 2's step with the
    # "fixed-small" variance.  Both draw x_T, then one z per step except the last, from the same per-sample
    # streams, so the chains agree step for step.  Float32 arithmetic on O(1) values along 100 steps: 1e-5
    # (measured 1e-6).  Clipped, wiggly_eps predicts |x0| > 1 at many steps, so the clamp is exercised; unclipped
    # it would blow up to |x| ~ 500, so the Gaussian predictor keeps values O(1) there.
    seeds = [3, 4, 5]
    model = wiggly_eps if clip else gaussian_eps(SCHED)
    ts = None if steps is None else timestep_sequence(SCHED, steps, "uniform")
    x_a, ch_a = with_chain(ancestral_sample, model, SCHED, PerSampleNoise(seeds), (D,), variance="fixed-small",
                                 clip_denoised=clip, timesteps=ts, every=1)
    x_d, ch_d = with_chain(ddim_sample, model, SCHED, PerSampleNoise(seeds), (D,), steps=steps, eta=1.0,
                            clip_denoised=clip, every=1)
    assert len(ch_a) == len(ch_d) == (T if steps is None else steps) + 1
    for (ta, xa), (td, xd) in zip(ch_a, ch_d):
        assert ta == td
        assert torch.allclose(xa, xd, rtol=0, atol=1e-5), ta
    assert torch.allclose(x_a, x_d, rtol=0, atol=1e-5)
    if clip:
        assert x_d.abs().max() <= 1.0
    # the same model with eta = 0 lands elsewhere: the comparison above is not vacuous
    assert not torch.allclose(ddim_sample(model, SCHED, PerSampleNoise(seeds), (D,), steps=steps), x_d, atol=1e-2)


def test_ddim_eta0_is_deterministic_and_uses_only_x_T():
    a = ddim_sample(wiggly_eps, SCHED, PerSampleNoise([1, 2]), (5,), steps=20)
    b = ddim_sample(wiggly_eps, SCHED, PerSampleNoise([1, 2]), (5,), steps=20)
    assert torch.equal(a, b)
    x_T = PerSampleNoise([1, 2]).randn((5,))
    assert torch.equal(ddim_sample(wiggly_eps, SCHED, None, (5,), steps=20, x_T=x_T), a)
    c = ddim_sample(wiggly_eps, SCHED, PerSampleNoise([1, 2]), (5,), steps=20, eta=0.5)
    assert not torch.allclose(a, c, atol=1e-3)


# -------------------------------------------------------------------------------------- DDIM inversion

def test_ddim_encode_decode_is_exact_when_eps_is_constant_along_the_path():
    # If eps_theta does not change along a trajectory, x0_pred stays put and every eq. 12 step (eta = 0) is the
    # exact ODE step, both ways: decode(encode(x0)) = x0 up to float32 round-off.  That round-off (6e-8 on O(1)
    # values) is divided by sqrt(abar) >= sqrt(2e-5) = 1/220 when x0_pred is formed at the noisiest level: 5e-5.
    c = torch.tensor([0.7, -1.2, 0.1])
    model = lambda x, t: c.expand_as(x)
    x0 = torch.tensor([[0.5, -0.9, 0.2], [-0.3, 0.0, 1.0]])
    for spacing in SPACINGS:
        x_T = ddim_encode(model, SCHED, x0, 20, spacing=spacing)
        ts = timestep_sequence(SCHED, 20, spacing)
        a = SCHED.alpha_bars[ts[-1]].item()
        assert torch.allclose(x_T, math.sqrt(a) * x0 + math.sqrt(1 - a) * c, atol=1e-5)   # eq. 4 with eps = c
        assert torch.allclose(ddim_decode(model, SCHED, x_T, 20, spacing=spacing), x0, rtol=0, atol=5e-5)


def test_ddim_encode_decode_gaussian_round_trip_converges_at_first_order():
    # For Gaussian data eps* changes along the ODE, and encode and decode are two explicit (Euler-type)
    # discretisations of one exactly invertible ODE: each is off by O(1/S), so the round trip error must halve
    # when S doubles (first order; 0.4-0.6 allows for the non-asymptotic part) and be small at S = T.
    model = gaussian_eps(SCHED)
    x0 = (M + S * torch.randn(200, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).float()
    errs = {}
    for steps in (25, 50, 100):
        x_T = ddim_encode(model, SCHED, x0, steps)
        errs[steps] = (ddim_decode(model, SCHED, x_T, steps) - x0).pow(2).mean().sqrt().item()
    assert 0.4 < errs[50] / errs[25] < 0.6 and 0.4 < errs[100] / errs[50] < 0.6, errs
    assert errs[100] < 0.07 * S, errs      # measured 0.026 = 5.2% of s; the encoded x_T has std about 1
    x_T = ddim_encode(model, SCHED, x0, 100)
    assert abs(x_T.std().item() - 1) < 0.05


# --------------------------------------------------------------------- exact ODE solution: orders of accuracy

def _uniform_lambda_schedule(T_=161, lam_hi=6.0, lam_lo=-6.0):
    """A schedule whose lambdas are exactly uniform, so "logsnr" spacing with (T - 1) % (S - 1) == 0 has equal
    steps h (isolates the solver's order from the rounding of targets to integer timesteps)."""
    lam = torch.linspace(lam_hi, lam_lo, T_, dtype=torch.float64)
    return Schedule.from_alpha_bars(torch.sigmoid(2 * lam))


def _exact_ode(sched, ts, x_T, m=M, s=S):
    """The probability-flow ODE for Gaussian data keeps the z-score (x - sqrt(a) m) / sqrt(a s^2 + 1 - a) fixed
    (the monotone map between the two Gaussian marginals); run it from abar[t_{S-1}] to abar[t_0], then take
    the x0 prediction there (what every sampler returns)."""
    a1, a0 = sched.alpha_bars[ts[-1]].item(), sched.alpha_bars[ts[0]].item()
    z = (x_T.double() - math.sqrt(a1) * m) / math.sqrt(a1 * s ** 2 + 1 - a1)
    x = math.sqrt(a0) * m + math.sqrt(a0 * s ** 2 + 1 - a0) * z
    return (math.sqrt(a0) * s ** 2 * x + (1 - a0) * m) / (a0 * s ** 2 + 1 - a0)   # E[x0 | x_t]


def _alternating_lambda_schedule(n, lam_hi=6.0, lam_lo=-6.0):
    """A schedule of n + 1 levels whose lambda steps alternate h, 2h (n even), so r = h_{i-1} / h_i is 2 and 1/2
    in turn at every refinement, never 1 (sampled with all its timesteps)."""
    h = (lam_hi - lam_lo) / (n // 2 * 3)
    lam = lam_hi - torch.tensor([0.0] + [h if j % 2 == 0 else 2 * h for j in range(n)], dtype=torch.float64).cumsum(0)
    return Schedule.from_alpha_bars(torch.sigmoid(2 * lam))


@pytest.mark.parametrize("mesh", ["uniform", "alternating"])
@pytest.mark.parametrize("solver, order", [("ddim", 1), ("dpm++2m", 2)])
def test_ode_solvers_converge_at_their_order(solver, order, mesh):
    # Doubling the steps divides the global error by 2^order: DDIM is a first-order exponential integrator,
    # DPM-Solver++(2M) second order (its first-order first and last steps only add O(h^2) locally), on equal
    # lambda steps and on steps alternating h, 2h (variable-step 2M: its extrapolation uses r = h_{i-1} / h_i).
    # Bounds: 2^-order within a factor 1.3 either way, for the pre-asymptotic terms (alternating, measured: DDIM
    # 0.52, 0.51, 0.51; 2M 0.31, 0.26, 0.25).  Inverting r does not change the order (its O(h) error in D sums to
    # h_first^2 - h_last^2, a telescoping series): test_samplers_are_the_affine_maps_of_the_exact_recursion pins r.
    x_T = torch.randn(500, D, generator=torch.Generator().manual_seed(1))
    errs = []
    for n in (20, 40, 80, 160):
        if mesh == "uniform":
            sched, steps = _uniform_lambda_schedule(), n + 1
            ts = timestep_sequence(sched, steps, "logsnr")
            assert torch.equal(ts, torch.arange(0, 161, 160 // n))
        else:
            sched, steps = _alternating_lambda_schedule(n), None
            ts = torch.arange(n + 1)
            d = -log_snr(sched.alpha_bars).diff()
            assert torch.allclose(d[0::2], torch.full((n // 2,), 8.0 / n, dtype=torch.float64), rtol=1e-8)
            assert torch.allclose(d[1::2], 2 * d[0::2], rtol=1e-8)
        out = run_sampler(gaussian_eps(sched), sched, None, (D,), sampler=solver, steps=steps, spacing="logsnr",
                     clip_denoised=False, x_T=x_T)
        errs.append((out.double() - _exact_ode(sched, ts, x_T)).abs().max().item())
    ratios = [b / a for a, b in zip(errs, errs[1:])]
    for r in ratios:
        assert 2 ** -order / 1.3 < r < 2 ** -order * 1.3, (errs, ratios)


# --------------------------------------------------------------------------------- batch independence

CONFIGS = [
    dict(sampler="ddpm"), dict(sampler="ddpm", steps=10, variance="fixed-small", spacing="trailing"),
    dict(sampler="ddim", steps=10), dict(sampler="ddim", steps=10, eta=0.5, spacing="quadratic"),
    dict(sampler="dpm++2m", steps=10), dict(sampler="dpm++2m", steps=10, spacing="uniform", clip_denoised=False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_sample_depends_only_on_its_seed(cfg):
    # wiggly_eps acts on each sample alone; torch's vectorised sin may round the last bit differently from its
    # scalar tail, so compare at float32 resolution rather than bit for bit.
    alone = run_sampler(wiggly_eps, SCHED, PerSampleNoise([42]), (2, 3), **cfg)
    batch = run_sampler(wiggly_eps, SCHED, PerSampleNoise([1, 2, 42, 3, 4]), (2, 3), **cfg)
    assert torch.allclose(alone[0], batch[2], rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[2], atol=1e-2)


def test_base_seed_changes_every_sample():
    """torch's CPU generator keeps only the low 32 bits of a seed, so the base seed must reach those bits:
    different base seeds draw different noise, and the same one the same noise."""
    from ddpm.sampling.generate import sample_seed
    draw = lambda base: PerSampleNoise([sample_seed(base, k) for k in range(4)]).randn((8,))
    assert torch.equal(draw(3), draw(3))
    for a, b in [(0, 1), (1, 2), (0, 2**31), (5, -5)]:
        assert not torch.isclose(draw(a), draw(b)).any(), (a, b)
    assert [sample_seed(0, k) for k in range(3)] == [0, 1, 2]
    assert all(0 <= sample_seed(s, k) < 2**32 for s in (-7, 0, 10**12) for k in (0, 10**6))
    # base seeds under 1,000 apart share no sample seed among their first 1.9 million samples
    d = np.arange(1, 1000, dtype=np.uint64)
    offsets = (d * np.uint64(0x9E3779B9)) % np.uint64(2**32)
    assert int(np.minimum(offsets, np.uint64(2**32) - offsets).min()) > 1_900_000


@pytest.mark.parametrize("chunk", [3, 16])
def test_chunked_noise_is_per_sample_and_standard_normal(chunk):
    """Drawing several steps per generator call (the GPU default) keeps row k a function of seed k: the same
    rows alone or in a batch, over chunk boundaries and a change of shape.  Its n = 20 x 3 x 512 draws have
    mean 0 and variance 1 within 5 standard errors (1 / sqrt(n) = 5.7e-3 and sqrt(2 / n) = 8.1e-3)."""
    batch, alone = PerSampleNoise([1, 42, 2], chunk=chunk), PerSampleNoise([42], chunk=chunk)
    draws = []
    for i in range(20):
        shape = (4, 128) if i < 12 else (512,)
        b, a = batch.randn(shape), alone.randn(shape)
        assert b.shape == (3, *shape) and torch.equal(b[1], a[0])
        draws.append(b.reshape(3, -1))
    x = torch.cat(draws, 1)
    assert abs(x.mean().item()) < 5 * 5.7e-3 and abs(x.var().item() - 1) < 5 * 8.1e-3
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(x[0], x[2])
    with pytest.raises(ValueError, match="chunk"):
        PerSampleNoise([0], chunk=0)
    cfg = dict(sampler="ddpm", steps=10)
    alone = run_sampler(wiggly_eps, SCHED, PerSampleNoise([42], chunk=chunk), (2, 3), **cfg)
    batch = run_sampler(wiggly_eps, SCHED, PerSampleNoise([1, 42], chunk=chunk), (2, 3), **cfg)
    assert torch.allclose(alone[0], batch[1], rtol=0, atol=1e-6)


def test_sample_depends_only_on_its_seed_with_a_unet():
    # A real (tiny) network: GroupNorm and attention normalise each sample on its own.  Convolutions may pick a
    # different kernel for another batch size, hence 1e-5 rather than bit equality.
    from ddpm.model.unet import UNet, preset
    torch.manual_seed(0)
    net = UNet(preset("tiny", image_size=8)).eval()
    with torch.no_grad():
        for p in net.parameters():            # zero-initialised output layers would make eps = 0
            p.add_(0.05 * torch.randn_like(p))
    for sampler in SAMPLERS:
        alone = run_sampler(net, SCHED, PerSampleNoise([9]), (1, 8, 8), sampler=sampler, steps=4)
        batch = run_sampler(net, SCHED, PerSampleNoise([5, 9, 6]), (1, 8, 8), sampler=sampler, steps=4)
        assert torch.allclose(alone[0], batch[1], rtol=0, atol=1e-5), sampler


# ------------------------------------------------------------------ Gaussian data: the samplers' moments

def affine_recursion(cfg, sched=SCHED, m=M, s=S):
    """What a sampler returns for x0 ~ N(m, s^2) as an affine map of its draws, per dimension (float64):
    x_0 = P x_T + R + sum_j Q[j] z_j, with z_j the j-th draw after x_T (one per noisy step, in order).

    A scalar affine recursion from the papers' equations.  eps* = c (x - sqrt(a) m), c = sqrt(1-a)/(a s^2+1-a);
    x0_pred = (x - sqrt(1-a) eps*) / sqrt(a) = g x + h.  Each step maps the state x = P x_T + R + sum Q z
    to A x + B (+ sigma z_new).  cfg: the keys of :func:`ddpm.core.samplers.sample`, plus "sigma_scale" (ddpm)
    and "lower_order_final" (dpm++2m).
    """
    sampler, steps = cfg["sampler"], cfg.get("steps") or sched.num_timesteps
    ts = timestep_sequence(sched, steps, cfg.get("spacing", "uniform" if sampler != "dpm++2m" else "logsnr"))
    abar = sched.alpha_bars[ts].tolist()
    P, R, Q = torch.ones_like(m), torch.zeros_like(m), []
    prev = None                                                   # (P, R, h) of the previous x0_pred, for 2M
    lam = [0.5 * math.log(a / (1 - a)) for a in abar]
    for k in range(steps - 1, -1, -1):
        a, ap = abar[k], (abar[k - 1] if k > 0 else 1.0)
        c = math.sqrt(1 - a) / (a * s ** 2 + 1 - a)
        g, h = (1 - math.sqrt(1 - a) * c) / math.sqrt(a), math.sqrt(1 - a) * c * m
        if sampler == "ddpm":      # eq. 7 posterior mean at x0_pred with the respaced beta' = 1 - a / ap
            beta = 1 - a / ap
            c1, c2 = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
            A, B = c1 * g + c2, c1 * h
            P, R, Q = A * P, A * R + B, [A * q for q in Q]
            if k > 0:              # Algorithm 2: + sigma_t z, sigma_t^2 = beta' (fixed-large) or beta~' (eq. 7)
                var = beta if cfg.get("variance", "fixed-large") == "fixed-large" else (1 - ap) / (1 - a) * beta
                Q.append(cfg.get("sigma_scale", 1.0) * math.sqrt(var) * torch.ones_like(m))
        elif sampler == "ddim":    # eq. 12 with eps* = (x - sqrt(a) x0_pred) / sqrt(1 - a) and sigma of eq. 16
            sig2 = cfg.get("eta", 0.0) ** 2 * (1 - ap) / (1 - a) * (1 - a / ap)
            d = math.sqrt(max(1 - ap - sig2, 0.0))
            A = math.sqrt(ap) * g + d * (1 - math.sqrt(a) * g) / math.sqrt(1 - a)
            B = math.sqrt(ap) * h - d * math.sqrt(a) * h / math.sqrt(1 - a)
            P, R, Q = A * P, A * R + B, [A * q for q in Q]
            if k > 0 and sig2 > 0:
                Q.append(math.sqrt(sig2) * torch.ones_like(m))
        else:                      # DPM-Solver++(2M), Algorithm 2 of Lu et al. 2022 (deterministic: Q stays empty)
            x0 = (g * P, g * R + h)
            if k == 0:
                P, R = x0
                break
            hh = lam[k - 1] - lam[k]
            if prev is None or (cfg.get("lower_order_final", True) and k == 1):
                dd = x0
            else:
                r = prev[2] / hh   # r = h_{i-1} / h_i: the previous lambda step over this one
                dd = ((1 + 0.5 / r) * x0[0] - 0.5 / r * prev[0], (1 + 0.5 / r) * x0[1] - 0.5 / r * prev[1])
            ratio, coef = math.sqrt(1 - ap) / math.sqrt(1 - a), -math.sqrt(ap) * math.expm1(-hh)
            P, R = ratio * P + coef * dd[0], ratio * R + coef * dd[1]
            prev = (x0[0], x0[1], hh)
    return P, R, Q


def exact_moments(cfg, sched=SCHED, m=M, s=S):
    """Mean and variance (per dimension, float64) of what a sampler returns for x0 ~ N(m, s^2 I), x_T ~ N(0, I)
    and independent standard normal z_j: R and P^2 + sum_j Q_j^2 of :func:`affine_recursion`."""
    P, R, Q = affine_recursion(cfg, sched, m, s)
    return R, P ** 2 + sum(q ** 2 for q in Q)


# (config, relative variance bias bound): the exact output variance of each configuration is within that
# fraction of s^2 (measured with exact_moments; DDPM with T = 100 coarse steps is not yet the continuous limit,
# DDIM is first order, DPM-Solver++ second order).  The mean is off by at most sqrt(abar_start) |m| (x_T ~ N(0, I)
# ignores the data mean's trace at the first kept step): 0.0036 for these starts (abar = 2e-5), 0.006 allowed.
GAUSSIAN_CASES = [
    (dict(sampler="ddpm"), 0.04),                                          # measured +3.1%
    (dict(sampler="ddpm", variance="fixed-small"), 0.14),                  # measured -12.3%
    (dict(sampler="ddpm", steps=20, spacing="trailing"), 0.10),            # measured +8.7%
    (dict(sampler="ddim", steps=100), 0.065),                              # measured -5.6%
    (dict(sampler="ddim", steps=20, eta=1.0), 0.45),                       # measured -38.9%
    (dict(sampler="ddim", steps=20, eta=0.5, spacing="logsnr"), 0.30),     # measured -24.1%
    (dict(sampler="dpm++2m", steps=20), 0.01),                             # measured +0.5%
    (dict(sampler="dpm++2m", steps=50), 0.01),                             # measured -0.4%
]


@pytest.mark.parametrize("cfg, bias", GAUSSIAN_CASES, ids=lambda c: "-".join(str(v) for v in c.values())
                         if isinstance(c, dict) else str(c))
def test_gaussian_data_moments(cfg, bias):
    n = 2000
    x = run_sampler(gaussian_eps(SCHED), SCHED, PerSampleNoise(range(1000, 1000 + n)), (D,), clip_denoised=False,
               **cfg).double()
    mean_x, var_x = exact_moments(cfg)
    # 1. the discretised sampler itself: exact moments near the data's, within the stated bias
    assert (mean_x - M).abs().max() < 0.006
    assert ((var_x - S ** 2).abs() / S ** 2).max() < bias
    # 2. Monte Carlo against the exact moments.  Per dimension the sample mean has standard error
    # sqrt(var / n) (0.011 for var = 0.25); the D = 16 dimensions are independent, so the variance pooled over
    # them (about their own means) has relative standard error sqrt(2 / (D (n - 1))) = 0.79%.  Allow 4.5
    # standard errors (two-sided p = 7e-6 per check; the seeds are fixed, so the test is deterministic).
    se_mean = (var_x / n).sqrt()
    assert ((x.mean(0) - mean_x).abs() / se_mean).max() < 4.5
    pooled = (x.var(0) / var_x).mean()
    assert abs(pooled - 1) < 4.5 * math.sqrt(2 / (D * (n - 1)))
    # 3. so the samples land on N(m, s^2): mean within 4.5 SE + 0.006, variance within 4.5 SE + bias
    assert (x.mean(0) - M).abs().max() < 4.5 * S / math.sqrt(n) + 0.006
    assert abs(x.var(0).mean() / S ** 2 - 1) < 4.5 * math.sqrt(2 / (D * (n - 1))) + bias


def _library(cfg, model, sched, noise, x_T=None):
    """Run the library's sampler named by cfg (the keys of :func:`affine_recursion`) directly, unclipped."""
    kw = {k: v for k, v in cfg.items() if k != "sampler"}
    if cfg["sampler"] == "ddpm":
        steps, spacing = kw.pop("steps", None), kw.pop("spacing", "uniform")
        ts = None if steps is None else timestep_sequence(sched, steps, spacing)
        return ancestral_sample(model, sched, noise, (D,), clip_denoised=False, timesteps=ts, x_T=x_T, **kw)
    fn = ddim_sample if cfg["sampler"] == "ddim" else dpm_solver_2m_sample
    return fn(model, sched, noise, (D,), clip_denoised=False, x_T=x_T, **kw)


AFFINE_CASES = [
    dict(sampler="ddpm"), dict(sampler="ddpm", steps=10, variance="fixed-small", spacing="trailing"),
    dict(sampler="ddpm", steps=10, sigma_scale=0.5), dict(sampler="ddpm", steps=10, sigma_scale=0.0),
    dict(sampler="ddim", steps=10), dict(sampler="ddim", steps=10, eta=0.5),
    dict(sampler="ddim", steps=8, eta=0.25, spacing="quadratic"),
    dict(sampler="dpm++2m", steps=10),                          # logsnr: r = h_{i-1} / h_i near 1
    dict(sampler="dpm++2m", steps=10, spacing="uniform"),       # r from 0.30 to 1.16 on the linear schedule
    dict(sampler="dpm++2m", steps=20, spacing="trailing"),
    dict(sampler="dpm++2m", steps=10, spacing="uniform", lower_order_final=False),
    dict(sampler="dpm++2m", steps=3),                           # first-order steps only (the last by default)
]


@pytest.mark.parametrize("cfg", AFFINE_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_samplers_are_the_affine_maps_of_the_exact_recursion(cfg):
    # Sample by sample rather than in distribution: x_T and every z_j are drawn again from the same per-sample
    # seeds, and the library's output must be P x_T + R + sum_j Q_j z_j of :func:`affine_recursion` (Algorithm 2
    # with eq. 7 and sigma_scale; eq. 12 with sigma_t(eta) of eq. 16; Lu et al.'s Algorithm 2 with its r and
    # first-order last step).  Float32 round-off on O(1) values, amplified by up to 1/sqrt(abar_T) = 220 where
    # x0_pred is formed at the noisiest level: measured <= 1e-6, allowed 1e-5.  The sampler must also use up
    # exactly the draws that the recursion has (a missing or extra z would shift every later one).
    seeds = range(8)
    x = _library(cfg, gaussian_eps(SCHED), SCHED, PerSampleNoise(seeds)).double()
    P, R, Q = affine_recursion(cfg)
    draws = PerSampleNoise(seeds)
    want = P * draws.randn((D,)).double() + R
    for q in Q:
        want = want + q * draws.randn((D,)).double()
    assert torch.allclose(x, want, rtol=0, atol=1e-5), (x - want).abs().max().item()
    if cfg.get("sigma_scale") == 0.0:                       # no noise at all: the mean path through x_T alone
        assert all(bool((q == 0).all()) for q in Q)


def test_discretisation_error_vanishes_at_the_solvers_order():
    # On the paper's 1000-step schedule, with the Gaussian predictor the deterministic samplers are affine in
    # x_T per dimension, x_0 = P x_T + R, so two runs of the library (x_T = 0 and x_T = 1) give their exact slope
    # P (float32 round-off, ~1e-6).  The exact ODE (_exact_ode) has slope P*: the error |P / P* - 1| halves per
    # doubling of the steps for DDIM (first order) and quarters for DPM-Solver++(2M) (second order), within a
    # factor 1.3 (measured 0.50, 0.47 and 0.25, 0.22), and the output variance P^2 approaches s^2 (the data's).
    sched = make_schedule()
    model = gaussian_eps(sched)
    x_T = torch.stack([torch.zeros(D), torch.ones(D)])
    for solver, order, ns in (("ddim", 1, (50, 100, 200)), ("dpm++2m", 2, (25, 50, 100))):
        errs, var_bias = [], []
        for n in ns:
            out = run_sampler(model, sched, None, (D,), sampler=solver, steps=n, spacing="logsnr", clip_denoised=False,
                         x_T=x_T).double()
            ts = timestep_sequence(sched, n, "logsnr")
            ode = _exact_ode(sched, ts, x_T)
            P, P_ode = out[1] - out[0], ode[1] - ode[0]
            errs.append((P / P_ode - 1).abs().max().item())
            var_bias.append(((P ** 2 - S ** 2).abs() / S ** 2).max().item())
        ratios = [b / a for a, b in zip(errs, errs[1:])]
        assert all(2 ** -order / 1.3 < r < 2 ** -order * 1.3 for r in ratios), (solver, errs)
        assert var_bias[2] < var_bias[1] < var_bias[0] < (0.1 if solver == "ddim" else 0.02), (solver, var_bias)


# ------------------------------------------------------------------------------------------ the dispatcher

def test_chain_frames_run_from_x_T_to_x_0():
    for sampler in SAMPLERS:
        x0, chain = with_chain(run_sampler, wiggly_eps, SCHED, PerSampleNoise([0, 1]), (3,), sampler=sampler, steps=10,
                               spacing="trailing", every=3)
        ts = timestep_sequence(SCHED, 10, "trailing")
        # x at kept index k is labelled with the paper's t = index + 1; frames every 3 steps left, plus x_T and x_0
        assert [t for t, _ in chain] == [int(ts[9]) + 1] + [int(ts[k - 1]) + 1 for k in (9, 6, 3)] + [0]
        assert all(f.device.type == "cpu" and f.shape == (2, 3) for _, f in chain)
        assert torch.equal(chain[-1][1], x0)
        assert torch.equal(chain[0][1], PerSampleNoise([0, 1]).randn((3,)))
    _, chain = with_chain(run_sampler, wiggly_eps, SCHED, PerSampleNoise([0]), (3,), every=25)
    assert [t for t, _ in chain] == [100, 75, 50, 25, 0]


def test_learned_range_output_is_split_for_every_sampler():
    # A learned-range network outputs [eps, v]; the deterministic samplers use only eps.
    two = lambda x, t: torch.cat([wiggly_eps(x, t), torch.zeros_like(x)], dim=1)
    for sampler in ("ddim", "dpm++2m"):
        a = run_sampler(wiggly_eps, SCHED, PerSampleNoise([4]), (2, 3), sampler=sampler, steps=8)
        b = run_sampler(two, SCHED, PerSampleNoise([4]), (2, 3), sampler=sampler, steps=8, variance="learned-range")
        assert torch.equal(a, b)
    run_sampler(two, SCHED, PerSampleNoise([4]), (2, 3), sampler="ddpm", steps=8, variance="learned-range")


def test_dispatcher_rejects_bad_arguments():
    noise = PerSampleNoise([0])
    with pytest.raises(ValueError):
        run_sampler(wiggly_eps, SCHED, noise, (3,), sampler="euler")
    with pytest.raises(ValueError):
        run_sampler(wiggly_eps, SCHED, noise, (3,), sampler="ddim", eta=1.5)
    with pytest.raises(ValueError):
        run_sampler(wiggly_eps, SCHED, noise, (3,), sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError):
        run_sampler(wiggly_eps, SCHED, noise, (3,), sampler="ddim", spacing="linear")
    with pytest.raises(ValueError):
        run_sampler(wiggly_eps, SCHED, noise, (3,), sampler="ddim", steps=T + 1)
    with pytest.raises(ValueError):
        run_sampler(wiggly_eps, SCHED, noise, (3,), variance="fixed")
    assert set(VARIANCE_TYPES) == {"fixed-large", "fixed-small", "learned-range"}


def test_inputs_are_not_changed():
    x_T = torch.randn(2, 3)
    keep = x_T.clone()
    for sampler in SAMPLERS:
        run_sampler(wiggly_eps, SCHED, PerSampleNoise([0, 1]), (3,), sampler=sampler, steps=5, x_T=x_T)
    x0 = torch.randn(2, 3)
    keep0 = x0.clone()
    ddim_encode(wiggly_eps, SCHED, x0, 5)
    assert torch.equal(x_T, keep) and torch.equal(x0, keep0)


def test_cuda_graphs_are_refused_off_cuda_before_any_work():
    """CUDA graphs cannot be checked without a GPU; what can be is that asking for them elsewhere fails at once."""
    from ddpm.model.cudagraph import GraphedNetwork
    net = GraphedNetwork(lambda x, t: x)
    with pytest.raises(RuntimeError, match="CUDA"):
        net(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    assert net.graphs == {}



@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")  # bf16 on purpose
def test_model_fn_precision():
    """auto is float32 on the CPU; bf16 runs the network under autocast (8 mantissa bits: relative errors of
    order 2^-8 per operation, so within 5% of the output's scale) and still returns float32."""
    from ddpm.model.unet import UNet, preset
    from ddpm.sampling.generate import model_fn
    torch.manual_seed(0)
    net = UNet(preset("tiny", image_size=8)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    cpu = torch.device("cpu")
    with torch.inference_mode():
        fp32, auto, bf16 = (model_fn(net, cpu, p)(x, t) for p in ("fp32", "auto", "bf16"))
    assert torch.equal(fp32, auto) and bf16.dtype == torch.float32
    err = (bf16 - fp32).abs().max().item()
    assert 0 < err < 0.05 * fp32.abs().max().item()
    with pytest.raises(ValueError, match="precision"):
        model_fn(net, cpu, "fp16")
