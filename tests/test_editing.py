"""The forward process at one t, SDEdit and RePaint: the maths (ddpm.core.editing) and the library (ddpm.sampling.edit).

The workhorse is again Gaussian data with its exact noise predictor (see tests/test_samplers.py), here a correlated
2-D Gaussian: inpainting one coordinate given the other must give the conditional distribution.  With an exact
predictor every RePaint step is affine in Gaussian draws, so the exact mean and variance of what it returns follow
from a small recursion of means and covariances, written below from the paper's equations.
"""
import math

import numpy as np
import pytest
import torch

from ddpm.core.editing import (
    alpha_bar,
    noise_to,
    repaint_calls,
    repaint_sample,
    repaint_schedule,
    sdedit_sample,
    sdedit_timesteps,
)
from ddpm.core.respace import timestep_sequence
from ddpm.core.samplers import PerSampleNoise
from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.sampling.edit import (
    ImageError,
    edit,
    fit_images,
    fit_mask,
    half_mask,
    inpaint,
    noised,
    read_picture,
)
from ddpm.sampling.generate import load_run

T = 100
SCHED = make_schedule(ScheduleConfig(num_timesteps=T, beta_start=1e-3, beta_end=0.2))  # as in test_samplers.py

# a correlated 2-D Gaussian: x ~ N(MU, SIGMA); coordinate 0 is known (= C0), coordinate 1 is painted
MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
RHO = 0.8
SIGMA = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64)
C0 = 0.8
COND_MEAN = float(MU[1] + RHO * (C0 - MU[0]))   # 0.2: E[x_1 | x_0 = C0] for unit variances
COND_VAR = 1 - RHO ** 2                         # 0.36 (the marginal variance is 1)


def gaussian_eps_2d(schedule=SCHED, mu=MU, sigma=SIGMA):
    """The exact noise predictor of x0 ~ N(mu, sigma): E[eps | x_t] = sqrt(1 - a) C^-1 (x_t - sqrt(a) mu),
    C = a sigma + (1 - a) I the covariance of x_t."""
    def model(x, t):
        a = schedule.alpha_bars[int(t[0])]
        cov = a * sigma + (1 - a) * torch.eye(2, dtype=torch.float64)
        return (math.sqrt(1 - a) * torch.linalg.solve(cov, (x.double() - a.sqrt() * mu).T).T).to(x.dtype)
    return model


def wiggly_eps(x, t):
    """A nonlinear stand-in for a network (see test_samplers.py)."""
    return 1.5 * torch.sin(1.3 * x + 0.05 * t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype))


def exact_repaint_moments(steps, jump_length, resample, schedule=SCHED):
    """Mean and variance of RePaint's painted coordinate for the 2-D Gaussian, from the equations alone.

    The state x = (known, painted) stays Gaussian: track its mean m and covariance P.  A reverse step maps x to
    mu(x) = A x + b (the posterior mean, eq. 7 of Ho et al., at x0_pred of the exact predictor), then the painted
    coordinate gets + sigma z (sigma^2 = beta of the respaced step; none at the last) and the known one is
    replaced by an independent sqrt(abar') C0 + sqrt(1 - abar') eps (RePaint eqs. 8-10).  A jump from level i
    to j multiplies x by q = sqrt(abar_j / abar_i) and adds (1 - q^2) I.
    """
    ts = timestep_sequence(schedule, steps, "uniform")
    abar = schedule.alpha_bars[ts].tolist()
    eye, mu, sigma = np.eye(2), MU.numpy(), SIGMA.numpy()
    m, P = np.zeros(2), np.eye(2)  # x starts as N(0, I)
    path = repaint_schedule(steps, jump_length, resample)
    for i, j in zip(path[:-1], path[1:]):
        if j > i:
            q = math.sqrt(abar[j] / abar[i])
            m, P = q * m, q * q * P + (1 - q * q) * eye
            continue
        a, ap = abar[i], (abar[j] if j >= 0 else 1.0)
        beta = 1 - a / ap
        cinv = np.linalg.inv(a * sigma + (1 - a) * eye)
        g = (eye - (1 - a) * cinv) / math.sqrt(a)          # x0_pred = g x + h
        h = (1 - a) * cinv @ mu
        c1, c2 = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
        A, b = c1 * g + c2 * eye, c1 * h
        painted_mean = (A @ m + b)[1]
        painted_var = (A @ P @ A.T)[1, 1] + (beta if j >= 0 else 0.0)
        m = np.array([math.sqrt(ap) * C0, painted_mean])
        P = np.diag([1 - ap, painted_var])
    return float(m[1]), float(P[1, 1])


# --------------------------------------------------------------------------------- the forward process

def test_noise_to_is_eq_4_with_abar_and_snr():
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    for t in (1, 37, T):
        a = float(SCHED.alpha_bars[t - 1])
        out = noise_to(SCHED, x0, t, eps)
        assert torch.allclose(out.x, math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, atol=1e-6)
        assert out.abar == pytest.approx(a, rel=1e-12) and out.snr == pytest.approx(a / (1 - a), rel=1e-12)
    same = noise_to(SCHED, x0, 0, eps)
    assert torch.equal(same.x, x0) and same.abar == 1.0 and same.snr == math.inf
    assert alpha_bar(SCHED, 0) == 1.0 and alpha_bar(SCHED, T) == pytest.approx(float(SCHED.alpha_bars[-1]))
    for bad in (-1, T + 1, 2.5):
        with pytest.raises(ValueError, match="t must be"):
            noise_to(SCHED, x0, bad, eps)


# ------------------------------------------------------------------------------------------------ SDEdit

def test_sdedit_timesteps_start_where_x_t_sits():
    assert sdedit_timesteps(SCHED, 0).tolist() == []
    assert sdedit_timesteps(SCHED, 7).tolist() == list(range(7))
    assert sdedit_timesteps(SCHED, 7, steps=50).tolist() == list(range(7))
    ts = sdedit_timesteps(SCHED, 60, steps=6)
    assert len(ts) == 6 and int(ts[-1]) == 59 and bool((ts[1:] > ts[:-1]).all()) and int(ts[0]) >= 0


def test_sdedit_at_t_0_returns_the_input():
    x0 = torch.randn(2, 3)
    for sampler in ("ddpm", "ddim"):
        assert torch.equal(sdedit_sample(wiggly_eps, SCHED, x0, 0, PerSampleNoise([0, 1]), sampler=sampler), x0)


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 10), ("dpm++2m", 8)])
def test_sdedit_starts_from_x_t_and_is_deterministic(sampler, steps):
    x0, t = torch.randn(2, 3), 40
    seen = []
    a = sdedit_sample(wiggly_eps, SCHED, x0, t, PerSampleNoise([5, 6]), sampler=sampler, steps=steps,
                      on_step=seen.append)
    b = sdedit_sample(wiggly_eps, SCHED, x0, t, PerSampleNoise([5, 6]), sampler=sampler, steps=steps)
    c = sdedit_sample(wiggly_eps, SCHED, x0, t, PerSampleNoise([7, 6]), sampler=sampler, steps=steps)
    assert torch.equal(a, b) and not torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    eps = PerSampleNoise([5, 6]).randn((3,))
    assert torch.equal(seen[0].x, noise_to(SCHED, x0, t, eps).x)   # the first report is x_t of eq. 4
    assert seen[0].t == t and seen[-1].t == 0 and torch.equal(seen[-1].x, a)
    assert [s.left for s in seen] == list(range(len(seen) - 1, -1, -1)) == list(range(steps or t, -1, -1))


def test_sdedit_changes_more_from_a_larger_t():
    """Data N(0.5, 0.5^2 I) in 2-D with its exact predictor; SDEdit of 400 draws of it: the mean squared change
    grows with t, from almost none at t = 2 to that of an independent draw (2 x 0.25) at t = T."""
    mu, var = torch.tensor([0.5, 0.5], dtype=torch.float64), 0.25
    model = gaussian_eps_2d(mu=mu, sigma=var * torch.eye(2, dtype=torch.float64))
    x0 = (mu + math.sqrt(var) * torch.randn(400, 2, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)).float()
    change = []
    for t in (2, 10, 50, T):
        x = sdedit_sample(model, SCHED, x0, t, PerSampleNoise(range(400), chunk=16), clip_denoised=False)
        change.append((x - x0).pow(2).mean().item())
    assert change == sorted(change) and change[0] < 0.01           # measured 0.0065, 0.135, 0.478, 0.554
    assert change[-1] == pytest.approx(2 * var, rel=0.15)


# ---------------------------------------------------------------------------------------------- RePaint

def test_repaint_schedule_walks_each_window_resample_times():
    assert repaint_schedule(5, 2, 1) == [4, 3, 2, 1, 0, -1]          # no resampling: straight down
    path = repaint_schedule(10, 3, 3)
    assert path[0] == 9 and path[-1] == -1
    moves = [b - a for a, b in zip(path[:-1], path[1:])]
    assert set(moves) == {-1, 3}
    # jumps at 0, 3 and 6 (below 10 - 3), each taken resample - 1 = 2 times
    assert sorted(a for a, b in zip(path[:-1], path[1:]) if b > a) == [0, 0, 3, 3, 6, 6]
    assert repaint_calls(10, 3, 3) == moves.count(-1) == 10 + 2 * 3 * 3
    assert repaint_calls(100, 5, 5) == 100 + 4 * 5 * 19
    with pytest.raises(ValueError, match="jump_length 10 leaves no room"):
        repaint_schedule(10, 10, 2)
    for bad in [(0, 1, 1), (5, 0, 1), (5, 1, 0)]:
        with pytest.raises(ValueError):
            repaint_schedule(*bad)


def test_repaint_keeps_the_known_pixels_exactly():
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    mask[:, :, 2:] = True
    keep = x0.clone()
    seen = []
    x = repaint_sample(wiggly_eps, SCHED, x0, mask, PerSampleNoise([0, 1, 2]), steps=20, jump_length=3, resample=3,
                       on_step=seen.append)
    assert torch.equal(x[:, :, :2], x0[:, :, :2]) and not torch.equal(x[:, :, 2:], x0[:, :, 2:])
    assert torch.equal(x0, keep)
    assert len(seen) == repaint_calls(20, 3, 3) + 1 and seen[0].x0 is None and seen[-1].t == 0
    assert [s.left for s in seen] == list(range(len(seen) - 1, -1, -1))
    again = repaint_sample(wiggly_eps, SCHED, x0, mask, PerSampleNoise([0, 1, 2]), steps=20, jump_length=3, resample=3)
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match="does not fit"):
        repaint_sample(wiggly_eps, SCHED, x0, mask[:, :, :3], PerSampleNoise([0, 1, 2]), steps=5, resample=1)


def test_repaint_exact_moments_approach_the_conditional_as_resampling_grows():
    """RePaint is approximate: the known pixels are re-noised independently of what the model drew, so each step
    conditions on a noisy copy of them.  With resampling the painted coordinate's distribution closes in on the
    conditional N(0.2, 0.36); plain replacement (resample = 1) stays far off (mean 0.04, variance 0.53)."""
    moments = {r: exact_repaint_moments(50, 1, r) for r in (1, 5, 20, 60)}
    mean_err = [abs(m - COND_MEAN) for m, _ in moments.values()]
    var_err = [abs(v - COND_VAR) / COND_VAR for _, v in moments.values()]
    assert mean_err[0] > 0.15 and var_err[0] > 0.4                       # replacement: measured 0.160, +46%
    assert mean_err == sorted(mean_err, reverse=True) and var_err == sorted(var_err, reverse=True)
    assert mean_err[2] < 0.015 and var_err[2] < 0.045                    # r = 20: measured 0.0117, +4.0%
    assert mean_err[3] < 0.007 and var_err[3] < 0.03                     # r = 60: measured 0.0055, +2.3%


@pytest.mark.parametrize("jump_length, resample", [(1, 20), (5, 5), (1, 1)])
def test_repaint_recovers_the_conditional_of_a_correlated_gaussian(jump_length, resample):
    """Monte Carlo: the library's RePaint matches the exact moments above within 4.5 standard errors (n = 2000:
    0.013 on the mean, 3.2% on the variance), and with resampling (j = 1, r = 20) the samples land on the
    conditional mean and variance within that tolerance (its own bias, 0.012 and +4%, is below it), which plain
    replacement misses by 12 standard errors."""
    n = 2000
    x0 = torch.tensor([[C0, 0.0]]).repeat(n, 1)
    x = repaint_sample(gaussian_eps_2d(), SCHED, x0, torch.tensor([False, True]), PerSampleNoise(range(n), chunk=64),
                       steps=50, jump_length=jump_length, resample=resample, clip_denoised=False)
    assert bool((x[:, 0] == C0).all())
    painted = x[:, 1].double()
    mean, var = exact_repaint_moments(50, jump_length, resample)
    assert abs(painted.mean().item() - mean) < 4.5 * math.sqrt(var / n)
    assert abs(painted.var().item() / var - 1) < 4.5 * math.sqrt(2 / (n - 1))
    near = (abs(painted.mean().item() - COND_MEAN) < 4.5 * math.sqrt(COND_VAR / n)
            and abs(painted.var().item() / COND_VAR - 1) < 4.5 * math.sqrt(2 / (n - 1)))
    assert near == (resample > 1 and jump_length == 1)


# ---------------------------------------------------------------------------------------------- pictures

def test_fit_images_accepts_the_runs_size_grey_rgb_alpha_and_whole_multiples():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    expect = torch.from_numpy(grey)[None, None]
    assert torch.equal(fit_images(grey, 1, 8), expect)
    assert torch.equal(fit_images(np.repeat(grey[..., None], 3, -1), 1, 8), expect)
    assert torch.equal(fit_images(torch.from_numpy(grey)[None], 1, 8), expect)  # a (C, H, W) tensor
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0                                                         # transparent: black
    out = fit_images(rgba, 1, 8)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 1] == 200
    big = np.kron(grey, np.ones((4, 4), dtype=np.uint8))                      # 32x32, 4x4 blocks
    assert torch.equal(fit_images(big, 1, 8), expect)
    assert fit_images(grey, 3, 8).shape == (1, 3, 8, 8)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 255
    with pytest.raises(ImageError, match="colour"):
        fit_images(colour, 1, 8)
    with pytest.raises(ImageError, match="is 9x9; the run makes 8x8"):
        fit_images(np.zeros((9, 9), np.uint8), 1, 8)
    with pytest.raises(ImageError, match="uint8"):
        fit_images(np.zeros((8, 8), np.float32), 1, 8)


def test_masks_white_is_painted_and_halves():
    m = np.zeros((16, 16), dtype=np.uint8)
    m[0, 0] = 255                                                             # one sub-pixel of block (0, 0)
    assert fit_mask(m, 8)[0, 0].nonzero().tolist() == [[0, 0]]
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = 255
    assert fit_mask(rgba, 8)[0, 0, :4].all() and not fit_mask(rgba, 8)[0, 0, 4:].any()
    assert torch.equal(fit_mask(half_mask("bottom", 8), 8), half_mask("bottom", 8))
    assert half_mask("bottom", 8)[0, 0, 4:].all() and not half_mask("bottom", 8)[0, 0, :4].any()
    assert half_mask("right", 8)[0, 0, :, 4:].all() and half_mask("left", 8).sum() == 32
    with pytest.raises(ImageError, match="top, bottom, left, right"):
        half_mask("middle", 8)


def test_read_picture_png_and_npz(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "a.png")
    assert read_picture(tmp_path / "a.png").shape == (1, 8, 8, 1)
    np.savez(tmp_path / "b.npz", images=np.zeros((3, 8, 8, 1), np.uint8))
    assert read_picture(tmp_path / "b.npz").shape == (3, 8, 8, 1)
    (tmp_path / "c.png").write_bytes(b"not an image")
    for bad, what in [("c.png", "cannot read this image"), ("missing.png", "no such file")]:
        with pytest.raises(ImageError, match=what):
            read_picture(tmp_path / bad)


# ------------------------------------------------------------------------------------- on a (tiny) run

@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run, device="cpu")


def _digits(n=3):
    from ddpm.data.embedded import sklearn_digits_split
    return sklearn_digits_split("test")[0][:n]


def test_library_edit_at_t_0_is_the_input_and_deterministic(run):
    images = _digits()
    assert torch.equal(edit(run, images, 0).images, images)
    a = edit(run, images, 12, seed=3).images
    assert torch.equal(a, edit(run, images, 12, seed=3).images) and not torch.equal(a, edit(run, images, 12).images)
    assert a.dtype == torch.uint8 and a.shape == images.shape
    seen = []
    edit(run, images[:1], 12, seed=3, sampler="ddim", steps=4, on_step=seen.append)
    assert torch.equal(seen[0].x.cpu(), noised(run, images[:1], 12, seed=3).x) and len(seen) == 5
    n = noised(run, images, 20)
    assert n.x.shape == images.shape and n.abar == pytest.approx(float(run.schedule.alpha_bars[-1]))


def test_library_inpaint_keeps_what_is_outside_the_mask(run):
    images = _digits()
    mask = half_mask("bottom", 8)
    out = inpaint(run, images, mask, seed=1, steps=10, jump_length=2, resample=2).images
    assert torch.equal(out[:, :, :4], images[:, :, :4]) and not torch.equal(out[:, :, 4:], images[:, :, 4:])
    assert torch.equal(out, inpaint(run, images, mask, seed=1, steps=10, jump_length=2, resample=2).images)
    per_image = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    per_image[0, 0, 0, 0] = per_image[2, 0, 7, 7] = True
    out = inpaint(run, images, per_image, steps=5, resample=1).images
    assert torch.equal(out[~per_image.expand_as(out)], images[~per_image.expand_as(images)])
    with pytest.raises(ImageError, match="the mask is empty"):
        inpaint(run, images, torch.zeros(8, 8, dtype=torch.bool), steps=5, resample=1)
    with pytest.raises(ValueError, match="steps must lie in"):
        inpaint(run, images, mask, steps=21)
    with pytest.raises(ValueError, match="jump_length"):
        inpaint(run, images, mask, steps=5, jump_length=5, resample=2)
    with pytest.raises(ImageError, match="the run makes 8x8"):
        inpaint(run, np.zeros((28, 28), np.uint8), mask, steps=5, resample=1)
