"""Analytic-DPM's reverse variance (Bao et al. 2022) against closed forms for Gaussian data.

For x_0 ~ N(0, s^2 I) every marginal is Gaussian, V_k = abar_k s^2 + 1 - abar_k, the best noise predictor is
E[eps | x_k] = sqrt(1 - abar_k) x_k / V_k, and the true reverse step q(x_{k-1} | x_k) is Gaussian with variance
V_{k-1} - alpha_k V_{k-1}^2 / V_k (the conditional variance of a bivariate Gaussian).  The optimal sigma*^2 must
therefore equal that exactly, which checks the formula independently of its derivation.
"""
import math

import pytest
import torch

from ddpm.cli.main import main
from ddpm.core.analytic import analytic_variances, eps_norm_ratio
from ddpm.core.respace import respace, timestep_sequence
from ddpm.core.samplers import PerSampleNoise, ancestral_sample, run_sampler
from ddpm.core.schedule import make_schedule
from ddpm.sampling.generate import generate, load_run
from ddpm.sampling.variance import analytic_sigma2

S = 0.5  # the data's standard deviation


def gaussian_eps(schedule):
    """The exact E[eps | x_t] of N(0, S^2) data, as a model(x, t) of 0-based original indices."""
    def f(x, t):
        abar = schedule.alpha_bars.to(x.device)[t].float().view(-1, *([1] * (x.ndim - 1)))
        return (1 - abar).sqrt() * x / (abar * S ** 2 + 1 - abar)
    return f


def true_reverse_variance(reverse):
    abar, abar_prev = reverse.alpha_bars, reverse.alpha_bars_prev
    v, v_prev = abar * S ** 2 + 1 - abar, abar_prev * S ** 2 + 1 - abar_prev
    return v_prev - (abar / abar_prev) * v_prev ** 2 / v


@pytest.mark.parametrize("steps", [1000, 100, 10])
def test_optimal_variance_is_the_true_reverse_variance_for_gaussian_data(steps):
    schedule = make_schedule()
    reverse = respace(schedule, timestep_sequence(schedule, steps, "uniform"))
    gamma = (1 - reverse.alpha_bars) / (reverse.alpha_bars * S ** 2 + 1 - reverse.alpha_bars)  # exact E||eps*||^2/d
    got = analytic_variances(reverse, gamma)
    want = true_reverse_variance(reverse)
    assert got[0] == 0.0  # the last step adds no noise
    torch.testing.assert_close(got[1:], want[1:], rtol=1e-9, atol=0)
    # it lies between the paper's two fixed choices' ends: beta~ and beta / alpha
    assert bool((got[1:] >= reverse.posterior_variance[1:]).all())
    assert bool((got[1:] <= reverse.betas[1:] / (1 - reverse.betas[1:])).all())


def test_bounds_clip_an_estimate_outside_them():
    schedule = make_schedule()
    reverse = respace(schedule, timestep_sequence(schedule, 10, "uniform"))
    low = analytic_variances(reverse, torch.full((10,), 1.5))  # Gamma > 1 is clipped to 1: beta~ alone
    torch.testing.assert_close(low[1:], reverse.posterior_variance[1:])
    high = analytic_variances(reverse, torch.zeros(10))  # Gamma = 0: at most beta~ + (x0 coefficient)^2
    cap = reverse.posterior_variance + reverse.posterior_mean_coef1 ** 2
    assert bool((high[1:] <= cap[1:] + 1e-15).all())
    with pytest.raises(ValueError, match="one Gamma per step"):
        analytic_variances(reverse, torch.zeros(9))


def test_eps_norm_ratio_estimates_gamma_within_its_monte_carlo_error():
    # ||eps*||^2 / d of one image is (1 - abar) / V times a chi-square with d = 64 degrees of freedom over d: its
    # relative standard deviation is sqrt(2 / 64); the mean over M = 400 images has sqrt(2 / 25600) = 0.9%; 4%
    # allows 4.5 standard errors
    schedule = make_schedule()
    timesteps = torch.tensor([0, 99, 499, 999])
    x0 = S * torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    got = eps_norm_ratio(gaussian_eps(schedule), schedule, timesteps, x0, torch.Generator().manual_seed(1),
                         batch_size=128)
    abar = schedule.alpha_bars[timesteps]
    torch.testing.assert_close(got, (1 - abar) / (abar * S ** 2 + 1 - abar), rtol=0.04, atol=0)


def test_sampling_with_the_analytic_variance_draws_the_data_variance_in_ten_steps():
    # 10 respaced steps of the exact model: with sigma*^2 the chain is the true reverse process, so the samples have
    # variance S^2 (less the last step's posterior variance, 2.5e-5 here); 2,000 samples x 16 pixels estimate a
    # variance to 0.56% (sqrt(2 / 32000)): 3% is over 5 standard errors.  The paper's fixed variances, whose
    # respaced steps are too noisy (beta) or too quiet (beta~), miss by more than that.
    schedule = make_schedule()
    timesteps = timestep_sequence(schedule, 10, "uniform")
    reverse = respace(schedule, timesteps)
    gamma = (1 - reverse.alpha_bars) / (reverse.alpha_bars * S ** 2 + 1 - reverse.alpha_bars)
    noise = PerSampleNoise(range(2000), "cpu")
    model = gaussian_eps(schedule)
    common = dict(timesteps=timesteps, clip_denoised=False)
    x = ancestral_sample(model, schedule, noise, (1, 4, 4), sigma2=analytic_variances(reverse, gamma), **common)
    assert abs(x.var().item() / S ** 2 - 1) < 0.03
    for variance in ("fixed-large", "fixed-small"):
        other = ancestral_sample(model, schedule, PerSampleNoise(range(2000), "cpu"), (1, 4, 4), variance=variance,
                                 **common)
        assert abs(other.var().item() / S ** 2 - 1) > 0.05, variance


def test_run_sampler_takes_variances_for_ddpm_only():
    schedule = make_schedule()
    with pytest.raises(ValueError, match="ddpm sampler only"):
        run_sampler(gaussian_eps(schedule), schedule, PerSampleNoise([0], "cpu"), (1, 2, 2), sampler="ddim",
                    steps=5, sigma2=torch.zeros(5))
    with pytest.raises(ValueError, match="one variance per step"):
        ancestral_sample(gaussian_eps(schedule), schedule, PerSampleNoise([0], "cpu"), (1, 2, 2),
                         timesteps=torch.arange(0, 1000, 200), sigma2=torch.zeros(4))


def test_generate_with_the_analytic_variance_on_a_run(tiny_run):
    run = load_run(tiny_run)
    a = generate(run, 4, seed=3, sampler="ddpm", steps=5, variance="analytic", progress=False).images
    assert len(run.cache) == 1  # Gamma estimated once...
    b = generate(run, 4, seed=3, sampler="ddpm", steps=5, variance="analytic", progress=False).images
    assert len(run.cache) == 1  # ...and reused
    assert torch.equal(a, b)
    sigma2 = next(iter(run.cache.values()))
    fresh = analytic_sigma2(load_run(tiny_run), torch.as_tensor(next(iter(run.cache))[1]))
    torch.testing.assert_close(sigma2, fresh)  # the estimate's noise is seeded: the same on a new load
    reverse = respace(run.schedule, torch.as_tensor(next(iter(run.cache))[1]))
    assert bool((sigma2[1:] >= reverse.posterior_variance[1:] - 1e-12).all())
    assert not math.isnan(float(sigma2.sum()))
    with pytest.raises(ValueError, match="^variance=analytic sets .* for sampler=ddpm only"):
        generate(run, 2, sampler="ddim", steps=5, variance="analytic", progress=False)


def test_cli_samples_with_the_analytic_variance(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", str(tiny_run), "-n", "2", "--steps", "5", "--variance", "analytic", "--out", str(out),
                 "--no-progress"]) == 0
    assert (out / "samples.npz").is_file()


def fake_run(source, T=1000, kind="linear"):
    from types import SimpleNamespace

    from ddpm.core.schedule import ScheduleConfig
    return SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(source=source)),
                           schedule=make_schedule(ScheduleConfig(kind=kind, num_timesteps=T)), checkpoint="RUN")


@pytest.mark.parametrize("asked, want", [
    ((None, None, None), ("ddpm", 100, "analytic", "quadratic")),     # the default: 100 quadratic steps, analytic
    (("ddpm", None, None), ("ddpm", 100, "analytic", "quadratic")),
    (("ddpm", 50, None, "uniform"), ("ddpm", 50, "analytic", "uniform")),  # a spacing asked for is kept
    (("ddpm", 1000, None), ("ddpm", 1000, "analytic", None)),         # all T: nothing to space
    (("ddpm", None, "fixed-large"), ("ddpm", None, "fixed-large", None)),  # the paper's Algorithm 2: all T steps
    (("ddpm", 50, "fixed-small"), ("ddpm", 50, "fixed-small", None)),  # the sampler's own spacing (uniform)
    (("ddim", None, None), ("ddim", 50, None, None)),
    (("dpm++2m", 20, None, "logsnr"), ("dpm++2m", 20, None, "logsnr")),
])
def test_default_sampling_with_the_data_at_hand(asked, want):
    from ddpm.sampling.defaults import resolve_sampling
    notes = []
    assert resolve_sampling(fake_run("digits"), *asked, note=notes.append) == want
    assert not notes


def test_default_spacing_is_quadratic_only_where_its_start_at_0_8_T_is_nearly_pure_noise():
    """Quadratic spacing starts at 0.8 T: sqrt(abar) there is 0.039 on the linear schedule, 0.31 on the cosine one,
    whose runs keep uniform spacing (which starts at 0.99 T)."""
    from ddpm.sampling.defaults import resolve_sampling
    assert resolve_sampling(fake_run("digits"))[3] == "quadratic"
    assert resolve_sampling(fake_run("digits", kind="cosine"))[3] is None
    assert resolve_sampling(fake_run("digits", kind="cosine"), spacing="quadratic")[3] == "quadratic"  # asked for


def test_default_sampling_without_the_data_is_the_papers_with_a_note(tmp_path):
    from ddpm.sampling.defaults import resolve_sampling
    notes = []
    assert resolve_sampling(fake_run(str(tmp_path / "gone")), note=notes.append) == ("ddpm", None, None, None)
    assert len(notes) == 1 and "all T steps" in notes[0] and "gone" in notes[0]
    here = resolve_sampling(fake_run(str(tmp_path)), note=notes.append)  # a folder here
    assert here == ("ddpm", 100, "analytic", "quadratic")
    assert resolve_sampling(fake_run("digits", T=20), note=notes.append) == ("ddpm", 20, "analytic", None)  # at most T


def _label_network_run():
    """A stand-in class-conditional run on the sklearn digits whose 'network' predicts eps = its label everywhere
    (the "no class" label 10 when called without labels), so Gamma is the mean squared label: known exactly."""
    from types import SimpleNamespace

    from ddpm.data.datasets import DataConfig

    def network(x, t, y=None):
        y = torch.full((len(x),), 10) if y is None else y
        return y.float().view(-1, 1, 1, 1).expand(x.shape).clone()
    config = SimpleNamespace(data=DataConfig(source="sklearn-digits", image_size=8, class_cond=True),
                             model=SimpleNamespace(num_classes=10, in_channels=1))
    return SimpleNamespace(config=config, model=network, schedule=make_schedule(), device="cpu",
                           cache={})


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_a_conditional_run_estimates_gamma_with_each_images_label(w):
    from ddpm.data.embedded import sklearn_digits_split
    labels = sklearn_digits_split("train")[1].double()
    run = _label_network_run()
    steps = torch.tensor([0, 500, 999])
    # with every training image in the estimate, Gamma = mean of the guided eps~^2 = ((1 + w) y - 10 w)^2
    want = ((1 + w) * labels - 10 * w).pow(2).mean()
    reverse = respace(run.schedule, steps)
    expected = analytic_variances(reverse, torch.full((3,), float(want), dtype=torch.float64))
    got = analytic_sigma2(run, steps, images=len(labels), guide=(w, None))
    torch.testing.assert_close(got, expected)
    unguided = analytic_sigma2(run, steps, images=len(labels))  # called without labels: "no class", eps = 10
    torch.testing.assert_close(unguided, analytic_variances(reverse, torch.full((3,), 100.0, dtype=torch.float64)))
    assert len(run.cache) == 2  # one estimate per way of calling the network
