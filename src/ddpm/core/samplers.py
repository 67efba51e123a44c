"""Samplers: turn pure noise into images with a trained noise predictor.

Every sampler takes ``model(x_t, t) -> output`` (t: (B,) 0-based indices, see :mod:`ddpm.core.schedule`)
and a :class:`PerSampleNoise`, which gives each sample its own random stream so that a sample depends on
its seed alone, never on which batch drew it.

* :func:`ancestral_sample`  Algorithm 2 of Ho et al. 2020, on all T steps or on a respaced subset.
* :func:`ddim_sample`       DDIM (Song et al. 2021, eq. 12) with sigma_t(eta) of eq. 16; eta = 0 is the ODE.
* :func:`dpm_solver_2m_sample`  DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2).
* :func:`ddim_encode` / :func:`ddim_decode`  the eta = 0 ODE run forwards (image -> x_T) and back.
* :data:`REGISTRY`          name -> :class:`SamplerSpec` (the function and its defaults); :func:`run_sampler`
  draws with one by name.  Adding a sampler is one function with :func:`draw_ddpm`'s signature and one entry.

Every sampler returns x_0.  To watch the way there (pictures of the denoising chain, a live page), pass
``on_step``: it is called with a :class:`Step` before the first step (x = x_T) and after every step, with x and
the x_0 the network predicted; :class:`Chain` is such an observer that keeps frames for a picture.

Every sampler with S steps calls the network S times, at the kept timesteps t_{S-1} > ... > t_0
(:func:`ddpm.core.respace.timestep_sequence`), always with the original indices, and its last step lands on
abar = 1, i.e. returns the x_0 predicted at t_0.  Within one step every sample shares t, so the
step's coefficients are float64 Python scalars, computed from the float64 schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .diffusion import VARIANCE_TYPES, p_mean_variance, split_model_output
from .respace import SPACINGS, log_snr, respace, timestep_sequence
from .schedule import Schedule

__all__ = ["PerSampleNoise", "ModelFn", "Step", "OnStep", "Chain", "SamplerSpec", "REGISTRY", "SAMPLERS",
           "sampler_spec", "check_eta", "ancestral_sample", "ddim_sample", "ddim_sigma", "dpm_solver_2m_sample",
           "ddim_encode", "ddim_decode", "draw_ddpm", "draw_ddim", "draw_dpm_solver_2m", "run_sampler",
           "ancestral_timesteps"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_eta(eta: float) -> float:
    """DDIM's eta (Song et al. 2021, eq. 16) must lie in [0, 1]: 0 is the ODE, 1 Algorithm 2's posterior variance."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    return float(eta)


class PerSampleNoise:
    """One ``torch.Generator`` per sample, seeded from that sample's own seed.

    ``randn(shape)`` returns a (N, *shape) tensor whose row k comes from generator k only, so sample k is
    the same whether it is drawn alone or with 999 others.

    ``chunk``: draws per generator call.  Each generator fills ``chunk`` consecutive draws of one shape at
    once and hands them out one per ``randn``, so a step costs N / chunk launches instead of N (on a GPU a
    launch per sample per step adds up); default 1 on the CPU (where a launch is cheap), 16 elsewhere.  Row k
    still depends on sample k's seed and on ``chunk`` alone.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", chunk: int | None = None):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.chunk = int(chunk) if chunk is not None else (1 if self.device.type == "cpu" else 16)
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.generators = []
        for s in self.seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            self.generators.append(g)
        self._buffer: torch.Tensor | None = None  # (N, chunk, *shape) draws not yet handed out
        self._next = 0

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = tuple(shape)
        buf = self._buffer
        if buf is None or self._next == self.chunk or buf.shape[2:] != shape or buf.dtype != dtype:
            buf = self._buffer = torch.stack([torch.randn((self.chunk, *shape), generator=g, device=self.device,
                                                          dtype=dtype) for g in self.generators])
            self._next = 0
        self._next += 1
        return buf[:, self._next - 1]


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit="step", dynamic_ncols=True)


@dataclass
class Step:
    """What a sampler reports to ``on_step``: once before the first step and once after every step.

    left: sampler steps still to take (S before the first, 0 once x is x_0).  t: the paper's 1-based time x sits
    at (0 for x_0).  x: the current batch.  x0: the x_0 the network predicted in the step just taken (None
    before the first)."""

    left: int
    t: int
    x: torch.Tensor
    x0: torch.Tensor | None


OnStep = Callable[[Step], None]


class Chain:
    """An ``on_step`` observer keeping frames (t, cpu tensor) from x_T to x_0: x_T, x after every step that leaves
    a multiple of ``every`` steps to go, and x_0.  ``first``: keep only the first that many samples."""

    def __init__(self, every: int, first: int | None = None):
        if every < 1:
            raise ValueError(f"chain every must be >= 1, got {every}")
        self.every, self.first = every, first
        self.frames: list[tuple[int, torch.Tensor]] = []

    def __call__(self, step: Step) -> None:
        if not self.frames or step.left % self.every == 0:
            x = step.x if self.first is None else step.x[: self.first]
            self.frames.append((step.t, x.cpu()))


def _report_start(on_step: OnStep | None, timesteps: torch.Tensor, x: torch.Tensor) -> None:
    if on_step is not None:
        on_step(Step(len(timesteps), int(timesteps[-1]) + 1, x, None))


def _report(on_step: OnStep | None, timesteps: torch.Tensor, k: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    """After the step taken at kept index k: x now sits at kept index k - 1, or is x_0."""
    if on_step is not None:
        on_step(Step(k, int(timesteps[k - 1]) + 1 if k > 0 else 0, x, x0))


def _start(noise: PerSampleNoise | None, shape: Sequence[int], x_T: torch.Tensor | None) -> torch.Tensor:
    if x_T is not None:
        device = noise.device if noise is not None else x_T.device
        return x_T.to(device, torch.float32)
    if noise is None:
        raise ValueError("need either noise or x_T")
    return noise.randn(shape)


def _plan(schedule: Schedule, steps: int | None, spacing: str) -> torch.Tensor:
    return timestep_sequence(schedule, schedule.num_timesteps if steps is None else steps, spacing)


def ancestral_timesteps(schedule: Schedule, steps: int | None = None, spacing: str | None = None) -> torch.Tensor:
    """The 0-based indices the "ddpm" sampler of :func:`run_sampler` visits with ``steps`` and ``spacing``."""
    if steps is None or steps == schedule.num_timesteps:
        return torch.arange(schedule.num_timesteps)
    return _plan(schedule, steps, REGISTRY["ddpm"].spacing if spacing is None else spacing)


def _t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(i), device=x.device, dtype=torch.long)


def _denoise(model: ModelFn, x: torch.Tensor, t: int, abar: float, variance: str, clip_denoised: bool):
    """Call the network at original index t; return (eps, x0) with x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)
    (eq. 4 inverted; Song et al. 2021, eq. 12 "predicted x_0").  Clipping x0 to [-1, 1] recomputes eps from
    it, so that the step stays on the line through x and x0 (with eta = 1 this is exactly Algorithm 2's
    clipped posterior mean)."""
    eps, _ = split_model_output(model(x, _t(t, x)).float(), x, variance)
    x0 = (x - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)
    return eps, x0


@torch.inference_mode()
def ancestral_sample(model: ModelFn, schedule: Schedule, noise: PerSampleNoise, shape: Sequence[int], *,
                     variance: str = "fixed-large", clip_denoised: bool = True, sigma_scale: float = 1.0,
                     progress: bool = False, on_step: OnStep | None = None, x_T: torch.Tensor | None = None,
                     timesteps: Sequence[int] | torch.Tensor | None = None,
                     sigma2: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 2 of Ho et al. 2020, on all T steps or on the kept ``timesteps``.

    x_T ~ N(0, I); for t = T..1: z ~ N(0, I) if t > 1 else z = 0;  x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    shape: the shape of one sample, (C, H, W).  variance: sigma_t^2 = beta_t ("fixed-large"), beta~_t
    ("fixed-small") or learned ("learned-range").  sigma_scale multiplies sigma_t (0 gives the noise-free,
    mean-only path of the noise study).  on_step: called with a :class:`Step` before the first step and after
    every step (:class:`Chain` keeps frames for pictures of the denoising chain).
    timesteps: increasing 0-based indices to step through (default all T).  The reverse process then runs on
    :func:`ddpm.core.respace.respace`'s schedule, whose betas are 1 - abar_{t_k} / abar_{t_{k-1}} (Nichol &
    Dhariwal 2021, Sec. 4), so beta, beta~ and the learned-range interpolation between them are the respaced
    ones; the network is still called with the original index t_k.
    sigma2: sigma_k^2 of every (respaced) step, replacing the variance type's, e.g. Analytic-DPM's
    (:func:`ddpm.core.analytic.analytic_variances`); the mean is the same.
    Returns x_0.
    """
    if timesteps is None:
        timesteps = torch.arange(schedule.num_timesteps)
        reverse = schedule
    else:
        timesteps = torch.as_tensor(timesteps, dtype=torch.long)
        reverse = respace(schedule, timesteps)
    if noise is None:
        raise ValueError("ancestral sampling draws z at every step: pass noise (x_T alone is not enough)")
    if sigma2 is not None and len(sigma2) != len(timesteps):
        raise ValueError(f"sigma2 needs one variance per step: {len(sigma2)} for {len(timesteps)} steps")
    sigmas = None if sigma2 is None else torch.as_tensor(sigma2, dtype=torch.float64).sqrt().tolist()
    x = _start(noise, shape, x_T)
    _report_start(on_step, timesteps, x)
    for k in _progress(range(len(timesteps) - 1, -1, -1), progress, "ddpm", len(timesteps)):
        out = model(x, _t(timesteps[k], x)).float()
        out = p_mean_variance(reverse, out, x, _t(k, x), variance=variance, clip_denoised=clip_denoised)
        if k > 0:
            sigma = (0.5 * out.log_variance).exp() if sigmas is None else sigmas[k]
            x = out.mean + sigma_scale * sigma * noise.randn(shape)
        else:
            x = out.mean
        _report(on_step, timesteps, k, x, out.pred_x0)
    return x


def ddim_sigma(abar_t: float, abar_prev: float, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})
    (Song et al. 2021, eq. 16).

    eta = 1 gives sigma^2 = beta~ of the (respaced) step, the DDPM posterior variance; eta = 0 the ODE.
    """
    return eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))


@torch.inference_mode()
def ddim_sample(model: ModelFn, schedule: Schedule, noise: PerSampleNoise | None, shape: Sequence[int], *,
                steps: int | None = None, eta: float = 0.0, spacing: str = "uniform",
                variance: str = "fixed-large", clip_denoised: bool = True, progress: bool = False,
                on_step: OnStep | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) on ``steps`` kept timesteps (default all T).

    x_{t-1} = sqrt(abar_{t-1}) x0_pred + sqrt(1 - abar_{t-1} - sigma_t^2) eps_theta(x_t) + sigma_t z,
    with abar_{t-1} the abar of the previous kept step (1 after the last) and sigma_t(eta) of eq. 16.
    z is drawn (one ``noise.randn`` per step) only when eta > 0 and only before the last step, where
    sigma = 0; the draws therefore line up one for one with :func:`ancestral_sample`'s.  ``noise`` may be
    None when eta = 0 and ``x_T`` is given.  ``variance`` only says how to read the network's output
    (learned-range: the first half of the channels is eps).  ``on_step``: as for :func:`ancestral_sample`.
    Returns x_0.
    """
    check_eta(eta)
    timesteps = _plan(schedule, steps, spacing)
    abar = schedule.alpha_bars[timesteps].tolist()
    x = _start(noise, shape, x_T)
    if eta > 0 and noise is None:
        raise ValueError("eta > 0 needs noise")
    _report_start(on_step, timesteps, x)
    for k in _progress(range(len(timesteps) - 1, -1, -1), progress, "ddim", len(timesteps)):
        a_t, a_prev = abar[k], (abar[k - 1] if k > 0 else 1.0)
        eps, x0 = _denoise(model, x, int(timesteps[k]), a_t, variance, clip_denoised)
        sigma = ddim_sigma(a_t, a_prev, eta)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0)) * eps  # eq. 12
        if k > 0 and eta > 0:
            x = x + sigma * noise.randn(shape)
        _report(on_step, timesteps, k, x, x0)
    return x


@torch.inference_mode()
def ddim_encode(model: ModelFn, schedule: Schedule, x0: torch.Tensor, steps: int | None = None, *,
                spacing: str = "uniform", variance: str = "fixed-large", progress: bool = False) -> torch.Tensor:
    """Run the eta = 0 DDIM ODE (Song et al. 2021, eqs. 13-14, Sec. 4.3) from an image up to x at t_{S-1}.

    Each step is eq. 12 with eta = 0 read the other way: from x at kept index k - 1 (x_0 for the first
    step) to kept index k, x_next = sqrt(abar_next) x0_pred + sqrt(1 - abar_next) eps_theta, with eps_theta
    evaluated where x is (explicit Euler on the ODE; the very first call uses t_0 on the image itself, the
    nearest level the network knows).  :func:`ddim_decode` with the same steps and spacing inverts it up
    to the O(1/S) error of the two explicit discretisations.  Nothing is clipped.
    """
    timesteps = _plan(schedule, steps, spacing)
    abar = schedule.alpha_bars[timesteps].tolist()
    x = x0.float()
    for k in _progress(range(len(timesteps)), progress, "ddim encode", len(timesteps)):
        if k == 0:
            eps, _ = split_model_output(model(x, _t(timesteps[0], x)).float(), x, variance)
            x0_pred = x
        else:
            eps, x0_pred = _denoise(model, x, int(timesteps[k - 1]), abar[k - 1], variance, False)
        x = math.sqrt(abar[k]) * x0_pred + math.sqrt(1.0 - abar[k]) * eps
    return x


def ddim_decode(model: ModelFn, schedule: Schedule, x_T: torch.Tensor, steps: int | None = None, *,
                spacing: str = "uniform", variance: str = "fixed-large", progress: bool = False) -> torch.Tensor:
    """The eta = 0 DDIM ODE from a given x_T (e.g. :func:`ddim_encode`'s) down to x_0, without clipping."""
    return ddim_sample(model, schedule, None, tuple(x_T.shape[1:]), steps=steps, eta=0.0, spacing=spacing,
                       variance=variance, clip_denoised=False, progress=progress, x_T=x_T)


@torch.inference_mode()
def dpm_solver_2m_sample(model: ModelFn, schedule: Schedule, noise: PerSampleNoise | None, shape: Sequence[int], *,
                         steps: int | None = None, spacing: str = "logsnr", variance: str = "fixed-large",
                         clip_denoised: bool = True, lower_order_final: bool = True, progress: bool = False,
                         on_step: OnStep | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in data prediction (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t), the step from
    s = t_k to t = t_{k-1}, h = lambda_t - lambda_s, is
        x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D,
    with D = x0_pred(s) for the first step (first order: DDIM) and otherwise
        D = (1 + 1 / (2 r)) x0_pred(s) - 1 / (2 r) x0_pred(s_prev),  r = h_prev / h.
    ``lower_order_final`` also takes the last step between two noisy levels to first order, which steadies
    few-step sampling and step sequences whose last interval is much longer than the one before.  The final
    step to lambda = +inf (alpha = 1, sigma = 0) is first order by necessity and returns x0_pred at t_0.
    ``clip_denoised`` clamps x0_pred to [-1, 1] (the data-prediction model is what makes such thresholding
    possible).  Deterministic: noise is drawn once, for x_T.  ``on_step``: as for :func:`ancestral_sample`.
    Returns x_0.
    """
    timesteps = _plan(schedule, steps, spacing)
    abar = schedule.alpha_bars[timesteps]
    lam = log_snr(abar).tolist()
    alpha, sigma, abar = abar.sqrt().tolist(), (1 - abar).sqrt().tolist(), abar.tolist()
    x = _start(noise, shape, x_T)
    _report_start(on_step, timesteps, x)
    x0_prev, h_prev = None, None
    for k in _progress(range(len(timesteps) - 1, -1, -1), progress, "dpm++2m", len(timesteps)):
        _, x0 = _denoise(model, x, int(timesteps[k]), abar[k], variance, clip_denoised)
        if k == 0:
            x = x0  # h = +inf: sigma_t / sigma_s = 0, -alpha_t (e^{-h} - 1) = 1
        else:
            h = lam[k - 1] - lam[k]
            if x0_prev is None or (lower_order_final and k == 1):
                d = x0
            else:
                r = h_prev / h
                d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
            x = (sigma[k - 1] / sigma[k]) * x - alpha[k - 1] * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        _report(on_step, timesteps, k, x, x0)
    return x


def draw_ddpm(model: ModelFn, schedule: Schedule, noise: PerSampleNoise, shape: Sequence[int], *, steps: int | None,
              spacing: str, eta: float, sigma2: torch.Tensor | None, sigma_scale: float, **common) -> torch.Tensor:
    """Algorithm 2 (:func:`ancestral_sample`), on all T steps or respaced to ``steps``; ``sigma2`` (one variance per
    step, e.g. Analytic-DPM's) and ``sigma_scale`` set sigma_t.  The signature every registered sampler has;
    ``common``: variance, clip_denoised, progress, on_step, x_T."""
    timesteps = ancestral_timesteps(schedule, steps, spacing)
    timesteps = None if len(timesteps) == schedule.num_timesteps else timesteps
    return ancestral_sample(model, schedule, noise, shape, timesteps=timesteps, sigma2=sigma2,
                            sigma_scale=sigma_scale, **common)


def draw_ddim(model, schedule, noise, shape, *, steps, spacing, eta, sigma2, sigma_scale, **common) -> torch.Tensor:
    """DDIM (:func:`ddim_sample`) for the registry."""
    return ddim_sample(model, schedule, noise, shape, steps=steps, eta=eta, spacing=spacing, **common)


def draw_dpm_solver_2m(model, schedule, noise, shape, *, steps, spacing, eta, sigma2, sigma_scale,
                       **common) -> torch.Tensor:
    """DPM-Solver++(2M) (:func:`dpm_solver_2m_sample`) for the registry."""
    return dpm_solver_2m_sample(model, schedule, noise, shape, steps=steps, spacing=spacing, **common)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler of the registry.  draw: the function (:func:`draw_ddpm`'s signature).  steps: network calls when
    none are asked for (None: all T).  spacing: which timesteps a shortened run visits when none is asked for
    (:data:`ddpm.core.respace.SPACINGS`).  takes_eta: whether eta (DDIM's noise) applies.  takes_variance:
    whether sigma_t^2 (a fixed variance type, Analytic-DPM's) applies; the others only read the network's output
    by the variance type.  about: what it is, for the command line's and the page's help."""

    draw: Callable[..., torch.Tensor]
    steps: int | None
    spacing: str
    takes_eta: bool
    takes_variance: bool
    about: str


#: every sampler by name: the CLI's and the page's choices and every check come from here.  DPM-Solver++ steps
#: uniformly in lambda: on the linear schedule uniform-in-time steps leave its last interval with a lambda jump many
#: times the previous one, which the two-step extrapolation amplifies (see :mod:`ddpm.core.respace`).
REGISTRY: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(draw_ddpm, None, "uniform", False, True, "ancestral sampling, Algorithm 2"),
    "ddim": SamplerSpec(draw_ddim, 50, "uniform", True, False, "DDIM, eta = 0 deterministic"),
    "dpm++2m": SamplerSpec(draw_dpm_solver_2m, 50, "logsnr", False, False, "DPM-Solver++(2M)"),
}
SAMPLERS = tuple(REGISTRY)


def sampler_spec(sampler: str) -> SamplerSpec:
    """The registry's entry of ``sampler``; ValueError naming the choices for an unknown name."""
    if sampler not in REGISTRY:
        raise ValueError(f"sampler must be one of {', '.join(REGISTRY)}, got {sampler!r}")
    return REGISTRY[sampler]


def run_sampler(model: ModelFn, schedule: Schedule, noise: PerSampleNoise, shape: Sequence[int], *,
                sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0, spacing: str | None = None,
                variance: str = "fixed-large", clip_denoised: bool = True, progress: bool = False,
                on_step: OnStep | None = None, x_T: torch.Tensor | None = None,
                sigma2: torch.Tensor | None = None, sigma_scale: float = 1.0) -> torch.Tensor:
    """Draw one sample per seed of ``noise``, of per-sample ``shape`` (C, H, W), with the named sampler of
    :data:`REGISTRY`.

    steps: network calls; None means all T (for every sampler).  spacing: which timesteps
    (:data:`ddpm.core.respace.SPACINGS`); None picks the sampler's own.  eta: only for a sampler that takes it.
    variance: the model's variance type (sets sigma_t for "ddpm"; for the others it only says how to read the
    network's output).  on_step: called before the first step and after every step with a :class:`Step` (pass a
    :class:`Chain` for the denoising chain).  sigma2, sigma_scale: for a sampler that takes a variance, one variance
    per step of :func:`ancestral_timesteps` replacing the variance type's (Analytic-DPM's), and a factor on sigma_t
    (0: the mean-only path of the noise study).  Returns x_0.
    """
    spec = sampler_spec(sampler)
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
    spacing = spec.spacing if spacing is None else spacing
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if eta != 0.0 and not spec.takes_eta:
        raise ValueError(f"eta applies to {', '.join(k for k, v in REGISTRY.items() if v.takes_eta)} only, "
                         f"got eta={eta} with {sampler!r}")
    if (sigma2 is not None or sigma_scale != 1.0) and not spec.takes_variance:
        takes = ", ".join(k for k, v in REGISTRY.items() if v.takes_variance)
        raise ValueError(f"sigma2 and sigma_scale set Algorithm 2's sigma_t, for the {takes} sampler only, "
                         f"not {sampler!r}")
    return spec.draw(model, schedule, noise, shape, steps=steps, spacing=spacing, eta=eta, sigma2=sigma2,
                     sigma_scale=sigma_scale, variance=variance, clip_denoised=clip_denoised, progress=progress,
                     on_step=on_step, x_T=x_T)
