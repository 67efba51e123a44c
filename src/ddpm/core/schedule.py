"""Noise schedules: beta_1..beta_T and every coefficient derived from them.

Time index convention (the only place it is stated): **code indices are 0-based**.
Index ``i`` in every tensor of a :class:`Schedule`, and every ``t`` tensor passed to the
functions of :mod:`ddpm.core.diffusion`, :mod:`ddpm.core.likelihood` and :mod:`ddpm.core.samplers`,
is the paper's timestep ``t = i + 1``.  So ``betas[0]`` is the paper's beta_1 and
``betas[T - 1]`` is beta_T.  The network receives the same 0-based index.

All coefficients are precomputed once in float64 (the products of a thousand alphas lose
digits in float32) and cast to the working dtype when gathered by :func:`extract`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .config_io import from_known_fields

__all__ = ["ScheduleConfig", "Schedule", "linear_betas", "cosine_betas", "make_schedule", "extract", "SCHEDULE_KINDS"]


#: the beta schedules: linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021)
SCHEDULE_KINDS = ("linear", "cosine")


@dataclass(frozen=True)
class ScheduleConfig:
    """How to build the betas.

    kind: ``"linear"`` (Ho et al. 2020, Sec. 4) or ``"cosine"`` (Nichol & Dhariwal 2021, eq. 17).
    num_timesteps: T.
    beta_start, beta_end: beta_1 and beta_T of the linear schedule.
    cosine_s: the offset s of the cosine schedule; max_beta: its cap on beta_t.
    """

    kind: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be 'linear' or 'cosine', got {self.kind!r}")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if not (0 < self.beta_start <= self.beta_end < 1):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0 < self.max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {self.max_beta}")
        if not self.cosine_s >= 0:
            raise ValueError(f"cosine_s must be >= 0, got {self.cosine_s}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        return from_known_fields(cls, d, "schedule")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t linear from beta_1 = beta_start to beta_T = beta_end (the paper's CIFAR-10 setting), float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2).

    beta_t = 1 - abar(t)/abar(t-1), capped at ``max_beta`` to avoid the singularity at t = T.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = 1 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


class Schedule:
    """Every per-timestep coefficient of DDPM, as float64 tensors of length T (index i = paper's t = i+1).

    Attributes (paper equation in brackets):
      betas            beta_t
      alphas           alpha_t = 1 - beta_t                                   [eq. 4]
      alpha_bars       abar_t = prod_{s<=t} alpha_s                            [eq. 4]
      alpha_bars_prev  abar_{t-1}, with abar_0 = 1
      sqrt_alpha_bars, sqrt_one_minus_alpha_bars                               [eq. 4]
      sqrt_recip_alpha_bars = 1/sqrt(abar_t), sqrt_recipm1_alpha_bars = sqrt(1/abar_t - 1)  [x0 from eps]
      posterior_variance  beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t     [eq. 7]
      posterior_log_variance_clipped  log beta~_t with beta~_1 (= 0) replaced by beta~_2, as improved-diffusion does
      posterior_mean_coef1  sqrt(abar_{t-1}) beta_t / (1 - abar_t)   (multiplies x0)   [eq. 7]
      posterior_mean_coef2  sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)  (multiplies x_t)  [eq. 7]
      log_betas        log beta_t
      fixed_large_log_variance  log beta_t, with beta~_2 at t = 1: the "fixed-large" log-variance as Ho et al.'s
                       code and improved-diffusion define it (only the decoder L_0 sees the change: Algorithm 2
                       adds no noise at t = 1)
      eps_coef, sqrt_recip_alphas  beta_t / sqrt(1 - abar_t) and 1 / sqrt(alpha_t), the coefficients of eq. 11
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone()
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1) (beta = 1 makes abar_T = 0 and x_0 unrecoverable)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
        self.sqrt_recip_alpha_bars = (1.0 / self.alpha_bars).sqrt()
        self.sqrt_recipm1_alpha_bars = (1.0 / self.alpha_bars - 1.0).sqrt()
        self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)
        if len(betas) > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        else:
            clipped = betas.clone()
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * self.alpha_bars_prev.sqrt() / (1.0 - self.alpha_bars)
        self.posterior_mean_coef2 = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bars)
        self.log_betas = betas.log()
        self.fixed_large_log_variance = torch.cat([self.posterior_log_variance_clipped[:1], self.log_betas[1:]])
        self.eps_coef = betas / self.sqrt_one_minus_alpha_bars    # eq. 11: beta_t / sqrt(1 - abar_t)
        self.sqrt_recip_alphas = 1.0 / self.alphas.sqrt()           # eq. 11: 1 / sqrt(alpha_t)

    @property
    def num_timesteps(self) -> int:
        """T."""
        return len(self.betas)

    @classmethod
    def from_alpha_bars(cls, alpha_bars: torch.Tensor) -> "Schedule":
        """Rebuild betas from a decreasing abar sequence: beta_i = 1 - abar_i / abar_{i-1} (abar_{-1} = 1).

        Used to respace a schedule onto a subset of timesteps (Nichol & Dhariwal 2021, Sec. 4).
        """
        alpha_bars = torch.as_tensor(alpha_bars, dtype=torch.float64)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        return cls(1.0 - alpha_bars / prev)

    def __repr__(self) -> str:
        return (f"Schedule(T={self.num_timesteps}, beta_1={self.betas[0].item():.3g}, "
                f"beta_T={self.betas[-1].item():.3g}, abar_T={self.alpha_bars[-1].item():.3g})")


def make_schedule(config: ScheduleConfig | None = None) -> Schedule:
    """Build the :class:`Schedule` a :class:`ScheduleConfig` describes."""
    config = config or ScheduleConfig()
    if config.kind == "linear":
        betas = linear_betas(config.num_timesteps, config.beta_start, config.beta_end)
    else:
        betas = cosine_betas(config.num_timesteps, config.cosine_s, config.max_beta)
    return Schedule(betas)


def extract(coef: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``coef[t]`` for a batch of 0-based timesteps and shape it to broadcast against ``like``.

    coef: (T,) float64 schedule tensor.  t: (B,) integer indices.  like: (B, ...) tensor.
    Returns (B, 1, ..., 1) in ``like``'s dtype and device (gathered in float64, then cast).
    """
    out = _on_device(coef, t.device)[t.long()]
    return out.to(like.dtype).reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.device)


def _on_device(coef: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``coef`` on ``device``, copied once and kept on the tensor itself (so the copy lives exactly as long as
    the schedule).  A fresh host-to-GPU copy at every step would stall the host until the GPU drained its queue."""
    if coef.device == device:
        return coef
    copies = coef.__dict__.setdefault("_device_copies", {})
    if device not in copies:
        with torch.inference_mode(False):  # usable by training too when first made while sampling
            copies[device] = coef.to(device)
    return copies[device]
