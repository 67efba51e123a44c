"""Every default of how to draw, in one place: what :class:`ddpm.SamplingConfig` (so :func:`ddpm.generate`, `ddpm
sample`, `ddpm eval quality`, `ddpm study noise`, the web page and `make demo`) draws with when nothing says otherwise.

Algorithm 2 on 100 respaced steps with Analytic-DPM's variance (:mod:`ddpm.sampling.variance`), the steps spaced
quadratically (t_k ~ k^2, dense at low noise; Song et al. 2021, App. D.2): on the digits it draws samples as good as
the paper's 1,000 steps at a tenth of the network calls (docs/performance.md, "Full quality in 100 steps").  (A
schedule that leaves much of the image at 0.8 T, where quadratic spacing starts, keeps uniform spacing.)  The
variance's estimate is stored with the checkpoint when training ends (and carried by export and import), so a
moved or imported run draws the same; a run with neither a stored estimate nor its training data here (a foreign
network imported) is drawn with the paper's own sampler instead, all T steps of Algorithm 2 with the run's
variance, and a note says so.  With a fixed or learned variance asked for, Algorithm 2 runs all T steps unless
``--steps`` says otherwise; the other samplers take their own steps and spacing
(:data:`ddpm.core.samplers.REGISTRY`).

A class-conditional run asked for no class is drawn as a model of the whole data: every class in turn (sample k of
class k mod K) and purely conditional (w = 0, one network pass a step), which on the digits is both its best FD and
a third of its unconditional model's (docs/conditional.md).  A class asked for is guided, w = 1 by default.
"""
from __future__ import annotations

import sys
from typing import NamedTuple

from ..core.guidance import check_guidance
from ..core.respace import timestep_sequence
from ..core.samplers import sampler_spec
from .variance import ANALYTIC, data_readable, has_stored_estimate

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_ANALYTIC_STEPS", "DEFAULT_ANALYTIC_SPACING", "MAX_SIGNAL_AT_START",
           "DEFAULT_GUIDANCE", "Sampling", "analytic_available", "resolve_sampling", "class_labels", "resolve_guidance",
           "resolve_classes"]

DEFAULT_SAMPLER = "ddpm"
#: Algorithm 2's steps with the analytic variance when none are asked for
DEFAULT_ANALYTIC_STEPS = 100
#: which of the T steps a shortened Algorithm 2 with the analytic variance visits when no spacing is asked for: on the
#: class-conditional digits model, FD 0.50-0.51 against uniform's 0.59-0.65 at 100 steps, level on the unconditional
#: one (docs/performance.md, "Full quality in 100 steps")
DEFAULT_ANALYTIC_SPACING = "quadratic"
#: quadratic spacing stops at 0.8 T, where the sampler starts from pure noise; that is only a fair start where
#: sqrt(abar) there, the share of the image left, is below this (the paper's linear schedule: 0.039; the cosine
#: schedule keeps 0.31 of the image there, so its runs keep uniform spacing, which starts near T)
MAX_SIGNAL_AT_START = 0.05
#: the guidance weight w when a class is asked for and no w is given: on the digits, w = 1 draws the digit asked for
#: 99.0% (DDIM-50) to 99.8% (DDPM-100) of the time, against 88.4% and 95.2% for w = 0 (docs/conditional.md); a run
#: asked for no class draws every class in turn with w = 0
DEFAULT_GUIDANCE = 1.0


class Sampling(NamedTuple):
    """How a command draws: the sampler, its steps (None: all T), the variance (None: the run's own) and the spacing
    of the steps (None: the sampler's own, :data:`ddpm.core.samplers.REGISTRY`)."""
    sampler: str
    steps: int | None
    variance: str | None
    spacing: str | None


def analytic_available(run) -> bool:
    """Whether ``run`` (a LoadedRun) can draw with the analytic variance: its checkpoint stores an estimate
    (:mod:`ddpm.sampling.variance`), or its training data is at hand to make one from."""
    return has_stored_estimate(run) or data_readable(run)


def resolve_sampling(run, sampler: str | None = None, steps: int | None = None, variance: str | None = None,
                     spacing: str | None = None, *, note=lambda text: print(text, file=sys.stderr)) -> Sampling:
    """:class:`Sampling` for ``run`` with the defaults above filled in.  ``note`` is told, in one line, when the
    analytic variance cannot be the default."""
    sampler = sampler or DEFAULT_SAMPLER
    if not sampler_spec(sampler).takes_variance:
        return Sampling(sampler, sampler_spec(sampler).steps if steps is None else steps, variance, spacing)
    if variance is None:
        if analytic_available(run):
            variance = ANALYTIC
        elif steps is None:
            note(f"note: {run.config.data.source}, the training data of {run.checkpoint}, is not here to estimate "
                 "the analytic variance from: drawing with all T steps of Algorithm 2 and the run's variance")
    if variance == ANALYTIC:
        T = run.schedule.num_timesteps
        steps = min(DEFAULT_ANALYTIC_STEPS, T) if steps is None else steps
        if spacing is None and steps < T:
            first = timestep_sequence(run.schedule, steps, DEFAULT_ANALYTIC_SPACING)[-1]
            if run.schedule.alpha_bars[first].sqrt() < MAX_SIGNAL_AT_START:
                spacing = DEFAULT_ANALYTIC_SPACING
    return Sampling(sampler, steps, variance, spacing)


def class_labels(num_classes: int, n: int | None = None, *, classes=None, per_class: int | None = None) -> list[int]:
    """Per-sample labels: ``classes`` (an int, or a list taken in turn: sample k gets ``classes[k % len(classes)]``)
    for ``n`` samples; or, with ``per_class`` K, K samples of every class in order (0, 0, ..., 1, 1, ...), which a
    grid K images wide shows one class per row.  Neither: every class in turn, the default of a run asked for no
    class."""
    if per_class is not None:
        if classes is not None or n is not None:
            raise ValueError("per_class gives the labels and their number; pass neither classes nor n with it")
        return [c for c in range(num_classes) for _ in range(per_class)]
    if n is None:
        raise ValueError("pass n, the number of samples, or per_class")
    if classes is None:
        classes = range(num_classes)
    classes = [classes] if isinstance(classes, int) else list(classes)
    if not classes:
        raise ValueError("classes is empty; name at least one class")
    return [int(classes[k % len(classes)]) for k in range(n)]


def resolve_guidance(labels, guidance: float | None) -> float:
    """The w a draw guides with: ``guidance`` when given, else :data:`DEFAULT_GUIDANCE` for a draw of classes asked
    for and 0 (nothing to guide towards, or every class in turn) for one without."""
    if guidance is not None:
        return check_guidance(guidance)
    return DEFAULT_GUIDANCE if labels is not None else 0.0


def resolve_classes(run, n: int, labels: list[int] | None, guidance: float | None) -> tuple[list[int] | None, float]:
    """(labels, w) a draw of ``n`` samples of ``run`` takes: the ``labels`` asked for, guided with ``guidance``
    (None: :data:`DEFAULT_GUIDANCE`); with none asked, a class-conditional run draws every class in turn with
    ``guidance`` (None: 0, purely conditional) and an unconditional run ``(None, 0.0)``."""
    names = run.config.class_names
    if labels is None and names is not None:
        return class_labels(len(names), n), resolve_guidance(labels, 0.0 if guidance is None else guidance)
    return labels, resolve_guidance(labels, guidance)
