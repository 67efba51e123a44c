"""Samplers: turn pure noise into images with a trained noise predictor.

Every sampler takes ``model(x_t, t) -> output`` (t: (B,) 0-based indices, see :mod:`ddpm.schedule`)
and a :class:`PerSampleNoise`, which gives each sample its own random stream so that a sample depends on
its seed alone, never on which batch drew it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .diffusion import p_mean_variance
from .schedule import Schedule

__all__ = ["PerSampleNoise", "ancestral_sample", "ModelFn"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PerSampleNoise:
    """One ``torch.Generator`` per sample, seeded from that sample's own seed.

    ``randn(shape)`` returns a (N, *shape) tensor whose row k comes from generator k only, so sample k is
    the same whether it is drawn alone or with 999 others.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = []
        for s in self.seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(s)
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, unit="step", dynamic_ncols=True)


@torch.inference_mode()
def ancestral_sample(model: ModelFn, schedule: Schedule, noise: PerSampleNoise, shape: Sequence[int], *,
                     variance: str = "fixed-large", clip_denoised: bool = True, sigma_scale: float = 1.0,
                     progress: bool = False, chain_every: int | None = None, x_T: torch.Tensor | None = None):
    """Algorithm 2 of Ho et al. 2020.

    x_T ~ N(0, I); for t = T..1: z ~ N(0, I) if t > 1 else z = 0;  x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    shape: the shape of one sample, (C, H, W).  variance: sigma_t^2 = beta_t ("fixed-large"), beta~_t
    ("fixed-small") or learned ("learned-range").  sigma_scale multiplies sigma_t (0 gives the noise-free,
    mean-only path of the noise study).  chain_every: also return the intermediate x_t every that many
    steps (and x_T and x_0), as a list of (t, tensor) pairs, for pictures of the denoising chain.
    Returns x_0, or (x_0, chain) when ``chain_every`` is set.
    """
    x = noise.randn(shape) if x_T is None else x_T.to(noise.device, torch.float32)
    chain = [(schedule.num_timesteps, x.cpu())] if chain_every else None
    n = x.shape[0]
    steps = range(schedule.num_timesteps - 1, -1, -1)
    for i in _progress(steps, progress, "sampling", schedule.num_timesteps):
        t = torch.full((n,), i, device=x.device, dtype=torch.long)
        out = p_mean_variance(schedule, model(x, t).float(), x, t, variance=variance, clip_denoised=clip_denoised)
        if i > 0:
            x = out.mean + sigma_scale * (0.5 * out.log_variance).exp() * noise.randn(shape)
        else:
            x = out.mean
        if chain is not None and (i % chain_every == 0 or i == 0):
            chain.append((i, x.cpu()))
    return (x, chain) if chain is not None else x
