"""Tests of classifier-free guidance (ddpm.core.guidance) and of guided sampling through every sampler.

The workhorse is a two-class Gaussian mixture, x0 | y ~ N(mu_y, s^2 I) with equal class weights, whose exact
noise predictors are known in closed form: given y, eps_y(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) mu_y) / v with
v = abar s^2 + 1 - abar (x_t | y ~ N(sqrt(abar) mu_y, v I), eq. 4); without y, E[eps | x_t] is the mixture of
the two weighted by the posterior class probabilities r_y(x_t).
"""
import math

import numpy as np
import pytest
import torch

from ddpm.core.guidance import (
    check_guidance,
    check_interval,
    guidance_combine,
    guided_model,
)
from ddpm.core.respace import timestep_sequence
from ddpm.core.samplers import SAMPLERS, Chain, PerSampleNoise, run_sampler
from ddpm.core.schedule import ScheduleConfig, make_schedule

T = 100
SCHED = make_schedule(ScheduleConfig(num_timesteps=T, beta_start=1e-3, beta_end=0.2))  # as in test_samplers
S = 0.5          # the classes' standard deviation s
NULL = 2         # the "no class" label of the toy: classes 0 and 1


def mixture_eps(mus, s=S, schedule=SCHED):
    """The exact labelled predictor f(x, t, y) of the two-class mixture with class means ``mus`` (2, D): the class's
    own eps for y in {0, 1}, the unconditional E[eps | x_t] for y = NULL."""
    abar = schedule.alpha_bars
    mus = torch.as_tensor(mus, dtype=torch.float64)

    def model(x, t, y):
        x = x.double()
        a = abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        v = a * s ** 2 + 1 - a
        centred = torch.stack([x - a.sqrt() * mus[k] for k in range(2)])           # (2, B, D)
        eps = (1 - a).sqrt() * centred / v
        logp = -(centred ** 2).flatten(2).sum(2) / (2 * v.flatten())               # (2, B), equal priors
        r = logp.softmax(0).reshape(2, -1, *([1] * (x.ndim - 1)))
        uncond = (r * eps).sum(0)
        yk = y.reshape(-1, *([1] * (x.ndim - 1)))
        out = torch.where(yk == NULL, uncond, torch.where(yk == 1, eps[1], eps[0]))
        return out.float()
    return model


# ------------------------------------------------------------------------------------ the combination

def test_guidance_combine_is_eq_6():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for w in (0.0, 0.5, 1.0, 4.0):
        assert torch.allclose(guidance_combine(c, u, w), (1 + w) * c - w * u, atol=1e-6)
        # the "guidance scale" s = 1 + w of other libraries: eps_u + s (eps_c - eps_u), the same mix
        assert torch.allclose(guidance_combine(c, u, w), u + (1 + w) * (c - u), atol=1e-6)
    assert guidance_combine(c, u, 0.0) is c                      # w = 0: purely conditional
    assert torch.allclose(guidance_combine(c, c, 3.0), c)       # no disagreement, nothing to push


def test_guided_model_is_one_forward_on_the_doubled_batch():
    calls = []

    def net(x, t, y):
        calls.append((x.clone(), t.clone(), y.clone()))
        # channel 0 plays eps, channel 1 a learned variance; both depend on the label
        return torch.cat([x * (1 + y.float()).reshape(-1, 1, 1, 1), x + y.float().reshape(-1, 1, 1, 1)], 1)

    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((3,), 7)
    labels = torch.tensor([0, 1, 4])
    out = guided_model(net, labels, 2.0, null_label=9, eps_channels=1)(x, t)
    assert len(calls) == 1
    xs, ts, ys = calls[0]
    assert torch.equal(xs, torch.cat([x, x])) and torch.equal(ts, torch.cat([t, t]))
    assert ys.tolist() == [0, 1, 4, 9, 9, 9]
    cond, uncond = net(x, t, labels), net(x, t, torch.full((3,), 9))
    assert torch.allclose(out[:, :1], 3.0 * cond[:, :1] - 2.0 * uncond[:, :1])
    assert torch.equal(out[:, 1:], cond[:, 1:])                 # the variance channel: the conditional pass's
    calls.clear()
    assert torch.equal(guided_model(net, labels, 0.0, null_label=9)(x, t), net(x, t, labels))
    assert len(calls) == 2 and calls[0][0].shape[0] == 3          # w = 0: one pass on the batch as it is


def test_guidance_in_an_interval_guides_only_there_at_the_price_of_one_pass_elsewhere():
    calls = []

    def net(x, t, y):
        calls.append(x.shape[0])
        return x * (1 + y.float()).reshape(-1, 1, 1, 1) + t.float().reshape(-1, 1, 1, 1)

    x, labels = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 4])
    everywhere = guided_model(net, labels, 2.0, null_label=9)
    inside = guided_model(net, labels, 2.0, null_label=9, interval=(10, 20))
    for step, guided in ((10, True), (15, True), (20, True), (9, False), (21, False)):
        t = torch.full((3,), step)
        calls.clear()
        want = everywhere(x, t) if guided else net(x, t, labels)
        calls.clear()
        assert torch.equal(inside(x, t), want)
        assert calls == ([6] if guided else [3])                 # outside: one pass of the batch, not the double
    t = torch.tensor([5, 15, 25])                                 # samples at different t: each as its t says
    mixed = inside(x, t)
    assert torch.equal(mixed[1], everywhere(x, t)[1]) and torch.equal(mixed[[0, 2]], net(x, t, labels)[[0, 2]])
    for bad in ((5, 4), (-1, 3), (0, 100)):
        with pytest.raises(ValueError, match="guidance interval"):
            check_interval(bad, 100)


def test_a_no_class_label_is_drawn_unguided():
    f = mixture_eps([[-1.0], [1.0]])
    x, t = torch.randn(4, 1), torch.full((4,), 50)
    assert torch.allclose(guided_model(f, torch.full((4,), NULL), 3.0, NULL)(x, t), f(x, t, torch.full((4,), NULL)))


@pytest.mark.parametrize("w", [-0.5, float("inf"), float("nan")])
def test_guidance_weight_is_checked(w):
    with pytest.raises(ValueError, match="guidance w"):
        check_guidance(w)


# ---------------------------------------------------- guided sampling on the two-class Gaussian mixture

D = 8
MUS = torch.stack([torch.full((D,), -1.0), torch.full((D,), 1.0)]).double()


@pytest.mark.parametrize("cfg, bias", [(dict(sampler="ddpm"), 0.04), (dict(sampler="dpm++2m", steps=20), 0.01)],
                         ids=["ddpm", "dpm++2m-20"])
def test_w0_lands_on_the_chosen_class_gaussian(cfg, bias):
    """w = 0 is the class's own predictor: samples of class y are N(mu_y, s^2 I) up to the sampler's own bias (the
    variance bias bounds are those test_samplers measures for s = 0.5; the mean is off by at most
    sqrt(abar_start) |mu| = 0.0045).  Labels alternate 1, 0, 1, ... within one batch."""
    n = 2000
    labels = torch.arange(n) % 2 == 0
    labels = labels.long()
    x = run_sampler(guided_model(mixture_eps(MUS), labels, 0.0, NULL), SCHED, PerSampleNoise(range(n)), (D,),
                    clip_denoised=False, **cfg).double()
    for k in (0, 1):
        xk = x[labels == k]
        m = len(xk)
        # mean per dimension: standard error s / sqrt(m); pooled variance: relative SE sqrt(2 / (D (m - 1)))
        assert (xk.mean(0) - MUS[k]).abs().max() < 4.5 * S / math.sqrt(m) + 0.006, k
        assert abs(xk.var(0).mean() / S ** 2 - 1) < 4.5 * math.sqrt(2 / (D * (m - 1))) + bias, k


def _reference_guided_ddim_mean(w: float, steps: int, mu=1.0, other=-1.0, nodes=120) -> tuple[float, float]:
    """E[x_0] and Var[x_0] of 1-D DDIM (eta = 0) driven by eps~ = (1 + w) eps_c - w eps_u of the two-class toy,
    for x_T ~ N(0, 1): Gauss-Hermite quadrature over x_T of the deterministic update, written out here in float64
    from the equations (Song et al. 2021, eq. 12: x_prev = sqrt(abar_prev) x0^ + sqrt(1 - abar_prev) eps~, with
    x0^ = (x - sqrt(1 - abar) eps~) / sqrt(abar); the last step lands on abar = 1)."""
    z, weights = np.polynomial.hermite_e.hermegauss(nodes)          # probabilists': weight exp(-z^2 / 2)
    weights = weights / weights.sum()
    abar = SCHED.alpha_bars.numpy()
    ts = timestep_sequence(SCHED, steps, "uniform").tolist()
    x = z.astype(np.float64)
    for k in range(len(ts) - 1, -1, -1):
        a = abar[ts[k]]
        a_prev = abar[ts[k - 1]] if k > 0 else 1.0
        v = a * S ** 2 + 1 - a
        eps_c = math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / v
        eps_o = math.sqrt(1 - a) * (x - math.sqrt(a) * other) / v
        logit = (-(x - math.sqrt(a) * mu) ** 2 + (x - math.sqrt(a) * other) ** 2) / (2 * v)
        r = 1 / (1 + np.exp(-logit))                                 # P(y = this class | x_t)
        eps_u = r * eps_c + (1 - r) * eps_o
        eps = (1 + w) * eps_c - w * eps_u
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    mean = float((weights * x).sum())
    return mean, float((weights * (x - mean) ** 2).sum())


def test_guidance_pushes_the_mean_away_from_the_other_class_as_the_formula_says():
    """1-D classes at -1 and +1: guided DDIM-50 samples of class +1 have the mean that quadrature of the guided
    update gives, which grows with w (away from the class at -1) while the spread shrinks."""
    n, steps = 3000, 50
    f = mixture_eps([[-1.0], [1.0]])
    ref = {w: _reference_guided_ddim_mean(w, steps) for w in (0.0, 1.0, 3.0)}
    # w = 0: the class itself, up to DDIM-50's first-order variance bias (-10.5% here; -5.6% at 100 steps)
    assert abs(ref[0.0][0] - 1.0) < 0.01 and abs(ref[0.0][1] / S ** 2 - 1) < 0.12
    # quadrature: mean 1.32 at w = 1 and 1.67 at w = 3, variance 0.113 and 0.073 (0.224 at w = 0)
    assert 1.3 < ref[1.0][0] < ref[3.0][0] and ref[3.0][1] < ref[1.0][1] < 0.6 * ref[0.0][1]
    for w, (mean, var) in ref.items():
        x = run_sampler(guided_model(f, torch.ones(n, dtype=torch.long), w, NULL), SCHED,
                        PerSampleNoise(range(n)), (1,), sampler="ddim", steps=steps, clip_denoised=False).double()
        assert abs(float(x.mean()) - mean) < 4.5 * math.sqrt(var / n), w
        assert abs(float(x.var()) / var - 1) < 4.5 * math.sqrt(2 / (n - 1)), w


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddpm", 10), ("ddim", 10), ("dpm++2m", 10)])
def test_guidance_works_with_every_sampler_and_the_chain(sampler, steps):
    assert sampler in SAMPLERS
    labels = torch.tensor([0, 1, 1, 0])
    chain = Chain(every=5)
    x = run_sampler(guided_model(mixture_eps(MUS), labels, 2.0, NULL), SCHED, PerSampleNoise(range(4)), (D,),
                    sampler=sampler, steps=steps, on_step=chain, clip_denoised=False)
    assert x.shape == (4, D) and torch.isfinite(x).all()
    assert (x[labels == 1].mean() > 0) and (x[labels == 0].mean() < 0)
    assert chain.frames[0][1].shape == (4, D) and chain.frames[-1][0] == 0
