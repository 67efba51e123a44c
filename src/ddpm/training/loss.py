"""The training objective as one callable (after NVlabs/edm's ``training/loss.py``): ``loss(net, x0, labels, gen)``
draws t, eps and the label coins from ``gen``, calls ``net(x_t, t, y)`` and returns the per-image loss (B,).

Its parts are chosen by name, so that a new weighting or objective is one function and one entry:

* :data:`OBJECTIVES`: what one image contributes, from the network's output: L_simple (Ho et al. 2020, eq. 14,
  each image's mean over its pixels), L_vlb (T L_{t-1} in bits/dim, Nichol & Dhariwal 2021) or L_hybrid
  (L_simple + lambda L_vlb, their eq. 16);
* :data:`WEIGHTINGS`: a weight w(t) per image, keyed by the :class:`~ddpm.runs.config.TrainConfig` field that
  turns it on (None: off), e.g. Min-SNR-gamma (Hang et al. 2023);
* t is Uniform{1..T} (Algorithm 1 line 3), or drawn by L_vlb's importance sampler (Nichol & Dhariwal 2021,
  eq. 18), whose weights 1 / (T p_t) then multiply the loss.

The trainer minimises :meth:`DiffusionLoss.mean`, the batch mean of what it returns (for unweighted L_simple eq. 14's
one mean over batch and pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from ..core.diffusion import min_snr_weights, q_sample, sample_timesteps, split_model_output
from ..core.likelihood import ImportanceSampler, hybrid_loss, loss_vlb
from ..core.schedule import Schedule

__all__ = ["DiffusionLoss", "OBJECTIVES", "WEIGHTINGS", "build_loss"]

#: objective: (schedule, config) -> fn(model_output, noise, x0, x_t, t) -> (B,) per image, or per pixel (B, ...)
OBJECTIVES: dict[str, Callable] = {
    "simple": lambda s, cfg: partial(_simple, variance=cfg.variance),
    "vlb": lambda s, cfg: lambda out, noise, x0, x_t, t: loss_vlb(s, out, x0, x_t, t, cfg.variance),
    "hybrid": lambda s, cfg: lambda out, noise, x0, x_t, t: hybrid_loss(s, out, noise, x0, x_t, t, cfg.variance,
                                                                        cfg.hybrid_lambda),
}

#: per-image weights w(t): the TrainConfig field that turns one on (None: off) -> fn(schedule, t, value) -> (B,)
WEIGHTINGS: dict[str, Callable] = {
    "min_snr_gamma": min_snr_weights,
}


def _simple(model_output, noise, x0, x_t, t, *, variance: str) -> torch.Tensor:
    """L_simple's terms (eq. 14), per pixel: (eps - eps_theta)^2; for learned-range only the eps half of the output
    enters.  :class:`DiffusionLoss` takes each image's mean over its pixels."""
    eps, _ = split_model_output(model_output, x_t, variance)
    return (eps - noise.float()).square()


def _per_image(raw: torch.Tensor) -> torch.Tensor:
    return raw if raw.dim() == 1 else raw.flatten(1).mean(1)


@dataclass
class DiffusionLoss:
    """``loss(net, x0, labels, gen)`` -> per-image loss (B,).

    Draws, in this order from ``gen``: t (uniform or importance-sampled), eps ~ N(0, I), and, for a conditional
    run, one coin per label that replaces it by "no class" (index ``num_classes``) with probability
    ``label_dropout`` (Ho & Salimans 2022, Algorithm 1).  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eq. 4)."""

    schedule: Schedule
    objective: Callable
    weighting: Callable | None = None
    importance: ImportanceSampler | None = None
    label_dropout: float = 0.0
    num_classes: int = 0

    def __call__(self, net: Callable, x0: torch.Tensor, labels: torch.Tensor | None,
                 gen: torch.Generator) -> torch.Tensor:
        raw, weights = self._draw(net, x0, labels, gen)
        losses = _per_image(raw)
        return losses if weights is None else losses * weights.to(losses.dtype)

    def mean(self, net: Callable, x0: torch.Tensor, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """What the trainer minimises: the batch mean of :meth:`__call__`.  Unweighted L_simple is reduced over batch
        and pixels in one mean (eq. 14 as F.mse_loss computes it, so training repeats earlier versions' bits)."""
        raw, weights = self._draw(net, x0, labels, gen)
        if weights is None:
            return raw.mean()
        return (_per_image(raw) * weights.to(raw.dtype)).mean()

    def _draw(self, net, x0, labels, gen):
        """(the objective's output: per pixel for L_simple, per image otherwise; the weights or None)."""
        n, device = x0.shape[0], x0.device
        weights = None
        if self.importance is not None:
            t, weights = self.importance.sample(n, gen, device)
        else:
            t = sample_timesteps(n, self.schedule.num_timesteps, gen, device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        x_t = q_sample(self.schedule, x0, t, noise)
        if labels is not None:
            labels = self.drop_labels(labels, gen)
        raw = self.objective(net(x_t, t, labels).float(), noise, x0, x_t, t)
        if self.importance is not None:
            self.importance.update(t, _per_image(raw))
        if self.weighting is not None:
            weights = self.weighting(t) if weights is None else weights * self.weighting(t)
        return raw, weights

    def drop_labels(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Each label replaced by "no class" (index ``num_classes``) with probability ``label_dropout``, one coin
        per image from ``gen`` (none drawn when the probability is 0)."""
        if self.label_dropout == 0:
            return labels
        drop = torch.rand(labels.shape, generator=gen, device=labels.device) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def state_dict(self) -> dict:
        """The importance sampler's history (empty without one); saved in ``trainer.pt`` under ``vlb``."""
        return {} if self.importance is None else {"importance": self.importance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.importance is not None and "importance" in state:
            self.importance.load_state_dict(state["importance"])


def build_loss(config, schedule: Schedule) -> DiffusionLoss:
    """The :class:`DiffusionLoss` a :class:`~ddpm.runs.config.TrainConfig` asks for: ``config.loss`` in
    :data:`OBJECTIVES`, every :data:`WEIGHTINGS` field that is set, importance sampling of t, label dropout."""
    weights = [partial(_weight, fn, schedule, getattr(config, name))
               for name, fn in WEIGHTINGS.items() if getattr(config, name, None) is not None]
    weighting = None if not weights else weights[0] if len(weights) == 1 else partial(_product, weights)
    return DiffusionLoss(schedule, OBJECTIVES[config.loss](schedule, config), weighting,
                         ImportanceSampler(schedule.num_timesteps) if config.importance_sampling else None,
                         config.label_dropout if config.data.class_cond else 0.0, config.model.num_classes)


def _weight(fn, schedule, value, t):
    return fn(schedule, t, value)


def _product(fns, t):
    out = fns[0](t)
    for fn in fns[1:]:
        out = out * fn(t)
    return out
