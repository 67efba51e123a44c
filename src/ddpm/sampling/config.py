"""How to draw: one frozen :class:`SamplingConfig` that :func:`ddpm.generate`, every command that draws, the web page
and the training previews take.

``SamplingConfig()`` is the one documented default (:mod:`ddpm.sampling.defaults`): Algorithm 2 on 100
quadratically spaced steps with Analytic-DPM's variance; a class-conditional run asked for no class draws every class
in turn with w = 0, an asked class is guided with w = 1.  A field left None is filled for a loaded run by
:meth:`SamplingConfig.for_run`, which returns the concrete config that ``samples.json`` records
(``dataclasses.asdict``).  The config checks itself once, when it is made: a ValueError whose message begins with
the field at fault, and names fields as ``field=value``, so that the command line can show it as its own one-line
error with the flags (``--field value``) and the page as it is.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from ..core.diffusion import VARIANCE_TYPES
from ..core.guidance import check_guidance
from ..core.respace import SPACINGS
from ..core.samplers import REGISTRY, SamplerSpec, check_eta, sampler_spec
from .defaults import DEFAULT_SAMPLER, resolve_guidance, resolve_sampling
from .variance import ANALYTIC

__all__ = ["SamplingConfig", "VARIANCES", "NO_CLASS", "parse_class"]

#: what ``variance`` may name: a variance type of the network, or Analytic-DPM's (:mod:`ddpm.sampling.variance`)
VARIANCES = (*VARIANCE_TYPES, ANALYTIC)
#: the label that asks a class-conditional run for its "no class" model (trained by label dropout)
NO_CLASS = "none"


def _names(kind: str) -> str:
    return ", ".join(k for k, spec in REGISTRY.items() if getattr(spec, kind))


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw.  sampler: a name of :data:`ddpm.core.samplers.REGISTRY`.  steps: network calls (None: the
    default; the sampler's own, or 100 for Algorithm 2 with the analytic variance).  spacing: which of the T
    timesteps a shortened sampler visits (:data:`ddpm.core.respace.SPACINGS`; None: the default).  variance:
    sigma_t^2 of a sampler that takes one, one of :data:`VARIANCES` (None: Analytic-DPM's where its estimate is at
    hand, else the run's own).  eta: DDIM's sigma_t(eta) (Song et al. 2021, eq. 16), in [0, 1].  guidance: the w of
    classifier-free guidance, eps~ = (1 + w) eps(x, t, y) - w eps(x, t) (None: 1 for a class asked for, 0 for every
    class in turn).  guidance_interval: (lo, hi) in the paper's t, the steps guided (None: all).  clip_denoised:
    clip the predicted x_0 to [-1, 1]."""

    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    spacing: str | None = None
    variance: str | None = None
    eta: float = 0.0
    guidance: float | None = None
    guidance_interval: tuple[int, int] | None = None
    clip_denoised: bool = True

    def __post_init__(self):
        spec = sampler_spec(self.sampler)
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) != self.steps
                                       or self.steps < 1):
            raise ValueError(f"steps must be a whole number >= 1, got {self.steps!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        if self.variance is not None and self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        if self.variance not in (None, "learned-range") and not spec.takes_variance:
            how = "takes its noise from eta" if spec.takes_eta else "adds no noise"
            raise ValueError(f"variance={self.variance} sets Algorithm 2's sigma_t, for sampler="
                             f"{_names('takes_variance')} only; {self.sampler} {how}")
        eta = check_eta(self.eta)
        if eta != 0.0 and not spec.takes_eta:
            raise ValueError(f"eta applies to sampler={_names('takes_eta')} only, not {self.sampler}; "
                             f"drop eta or choose sampler={_names('takes_eta')}")
        guidance = None if self.guidance is None else check_guidance(self.guidance)
        interval = self.guidance_interval
        if interval is not None:
            lo, hi = (int(v) for v in interval)
            if not 1 <= lo <= hi:
                raise ValueError(f"guidance_interval={lo}-{hi} must lie within t = 1..T, its start first")
            if guidance == 0:
                raise ValueError(f"guidance_interval={lo}-{hi} says where to guide; add guidance=W with W > 0")
            interval = (lo, hi)
        for name, value in (("steps", None if self.steps is None else int(self.steps)), ("eta", eta),
                            ("guidance", guidance), ("guidance_interval", interval),
                            ("clip_denoised", bool(self.clip_denoised))):
            object.__setattr__(self, name, value)

    @property
    def spec(self) -> SamplerSpec:
        """The registry's entry of the sampler."""
        return REGISTRY[self.sampler]

    def for_run(self, run, *, classes_asked: bool = False,
                note=lambda text: print(text, file=sys.stderr)) -> SamplingConfig:
        """The concrete config for the loaded ``run`` (its T, schedule, network and classes): steps, spacing,
        variance (for a sampler that takes one) and guidance filled in.  ``classes_asked``: the draw asks for
        classes (so the guidance default is w = 1, not the 0 of every class in turn).  ``note`` is told, in one
        line, when the analytic variance cannot be the default.  ValueError for what does not fit the run."""
        T = run.schedule.num_timesteps
        spec = self.spec
        chosen = resolve_sampling(run, self.sampler, self.steps, self.variance, self.spacing, note=note)
        steps = T if chosen.steps is None else chosen.steps
        if not 1 <= steps <= T:
            what = (f"got {steps}" if self.steps is not None
                    else f"the sampler's default is {steps}; pass steps={T} or fewer")
            raise ValueError(f"steps must lie in [1, {T}] (the run's T), {what}")
        if self.spacing not in (None, spec.spacing) and spec.steps is None and steps == T:  # for_run twice: as once
            raise ValueError(f"spacing={self.spacing} picks the steps a shortened sampler keeps; {self.sampler} here "
                             f"runs all T of them; add steps=S or drop spacing")
        self._check_network(run)
        variance = (chosen.variance or run.config.variance) if spec.takes_variance else self.variance
        names = run.config.class_names
        if names is None and (self.guidance or self.guidance_interval is not None):
            raise ValueError(f"guidance: {run.checkpoint} is an unconditional run (trained without class labels) "
                             "and has no class to guide towards")
        w = 0.0 if names is None else resolve_guidance(True if classes_asked else None, self.guidance)
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not w:
                raise ValueError(f"guidance_interval={lo}-{hi} says where to guide; add guidance=W with W > 0")
            if hi > T:
                raise ValueError(f"guidance_interval={lo}-{hi} must lie within the run's t = 1..{T}, its start first")
        return replace(self, steps=steps, spacing=chosen.spacing or spec.spacing, variance=variance, guidance=w)

    def _check_network(self, run) -> None:
        """Refuse the learned variance of a network that did not learn one (a network that did may also be drawn
        with a fixed variance, from the eps half of its output)."""
        mc = run.config.model
        if self.variance == "learned-range" and mc.output_channels != 2 * mc.in_channels:
            raise ValueError(f"variance: {run.checkpoint}, a network trained with variance {run.config.variance}, "
                             f"cannot be sampled with variance={self.variance} (learned-range needs the variance "
                             "outputs); drop variance")


def parse_class(names, token) -> int:
    """A class given by name (a string is tried as a name first, e.g. "7" of the digits) or by index (an int
    always is one), as its index in ``names``;
    ValueError naming the run's classes otherwise.  The command line's --class and --classes and the page's Class
    control all come through here (and :func:`ddpm.generate`'s string labels)."""
    names = list(names)
    text = str(token).strip()
    if text in names and not isinstance(token, int):
        return names.index(text)
    if isinstance(token, int) or text.lstrip("-").isdigit():
        if 0 <= int(text) < len(names):
            return int(text)
    raise ValueError(f"class {text}: not a class of this run; its classes are {', '.join(names)} "
                     f"(names, or indices 0-{len(names) - 1})")
