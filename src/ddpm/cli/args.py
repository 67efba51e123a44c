"""argparse value types shared by the ``ddpm`` subcommands: a bad number is refused while the command line
is parsed, before any run is loaded or any file is written."""
from __future__ import annotations

import argparse

from ..core.respace import SPACINGS
from ..core.samplers import REGISTRY
from ..runs.checkpoint import WEIGHT_SETS, resolve_checkpoint
from ..sampling.config import VARIANCES, SamplingConfig
from ..sampling.defaults import DEFAULT_ANALYTIC_SPACING, DEFAULT_ANALYTIC_STEPS, DEFAULT_GUIDANCE
from .errors import sampling_errors

__all__ = ["at_least", "int_list", "float_list", "weights_choice", "t_range", "positive_float", "non_negative_float",
           "add_weights", "add_sampler_and_steps", "add_spacing", "add_sampling_variance", "add_device_and_progress",
           "add_eta", "add_guidance", "add_steps", "sampling_from_args", "add_checkpoint_flag", "apply_checkpoint_flag"]


def at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {n}")
        return n
    return parse


def _number_list(value: str, kind, what: str) -> tuple:
    """Comma-separated ``kind`` numbers (at least one), or an argparse error naming ``what`` they should be."""
    try:
        out = tuple(kind(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {value!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


def int_list(value: str) -> tuple[int, ...]:
    """An argparse type: comma-separated whole numbers, e.g. ``1,2,2``."""
    return _number_list(value, int, "whole numbers")


def float_list(value: str) -> tuple[float, ...]:
    """An argparse type: comma-separated numbers, e.g. ``0.999,0.9999``."""
    return _number_list(value, float, "numbers")


def weights_choice(value: str) -> str:
    """An argparse type: ``ema``, ``model``, or ``ema:D``, the EMA of decay D of a run trained with several."""
    if value in WEIGHT_SETS:
        return value
    try:
        decay = float(value[4:]) if value.startswith("ema:") else None
    except ValueError:
        decay = None
    if decay is None or not 0 <= decay <= 1:
        raise argparse.ArgumentTypeError(f"expected ema, model or ema:DECAY (a decay in [0, 1]), got {value!r}")
    return value


def t_range(value: str) -> tuple[int, int]:
    """An argparse type: two whole numbers LO-HI (or LO,HI), a range of the paper's t."""
    parts = value.replace(",", "-").split("-")
    try:
        lo, hi = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI, two whole numbers, e.g. 100-700; got {value!r}") from None
    return lo, hi


def positive_float(value: str) -> float:
    """An argparse type: a number > 0."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return x


def non_negative_float(value: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not (x >= 0 and x != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return x


def add_weights(p, help: str = "which weights") -> None:
    """The --weights flag of the commands that read a run: the EMA weights (the default), the trained ones, or the
    EMA of one decay of a run trained with several (``ema:0.999``)."""
    p.add_argument("--weights", type=weights_choice, default=WEIGHT_SETS[0], metavar="{ema,model,ema:D}",
                   help=f"{help}: ema, model, or ema:D, the EMA of decay D of a run trained with --ema-decay D1,D2 "
                        f"(default: %(default)s)")


_DEFAULT = SamplingConfig()


def _takes(kind: str) -> str:
    return ", ".join(k for k, spec in REGISTRY.items() if getattr(spec, kind))


def add_sampler_and_steps(p) -> None:
    """The --sampler and --steps flags of the commands that draw samples, with their defaults and choices from
    :class:`ddpm.SamplingConfig` and the sampler registry (:data:`ddpm.core.samplers.REGISTRY`)."""
    p.add_argument("--sampler", default=_DEFAULT.sampler, choices=tuple(REGISTRY),
                   help=", ".join(f"{k} = {v.about}" for k, v in REGISTRY.items()) + " (default: %(default)s)")
    add_steps(p)


def add_steps(p) -> None:
    """The --steps flag: network calls of the sampler."""
    own = "; ".join(f"{k} {'all T' if v.steps is None else v.steps}" for k, v in REGISTRY.items())
    p.add_argument("--steps", type=at_least(1), default=_DEFAULT.steps,
                   help=f"sampling steps (default: {DEFAULT_ANALYTIC_STEPS} with the analytic variance; else the "
                        f"sampler's own: {own})")


def add_eta(p) -> None:
    """The --eta flag: DDIM's noise, for the samplers that take it."""
    p.add_argument("--eta", type=float, default=_DEFAULT.eta,
                   help=f"eta in [0, 1] for {_takes('takes_eta')} (default: {_DEFAULT.eta:g}, deterministic)")


def add_spacing(p) -> None:
    """The --spacing flag of the commands that draw samples: which of the T steps a shortened sampler visits."""
    own = "; ".join(f"{k} {v.spacing}" for k, v in REGISTRY.items())
    p.add_argument("--spacing", choices=SPACINGS, default=_DEFAULT.spacing,
                   help=f"which timesteps a shortened sampler visits (default: {DEFAULT_ANALYTIC_SPACING} with the "
                        "analytic variance where the schedule leaves under 5%% of the image at 0.8 T, as the "
                        f"paper's does; else the sampler's own: {own})")


def add_sampling_variance(p) -> None:
    """The --variance flag of the commands that draw samples: Algorithm 2's sigma_t^2."""
    p.add_argument("--variance", default=_DEFAULT.variance, choices=VARIANCES,
                   help=f"sigma_t^2 for {_takes('takes_variance')}: analytic, Analytic-DPM's optimal sigma_t^2 (Bao "
                        "et al. 2022; the default where its estimate is at hand, elsewhere the run's own), or the "
                        "paper's fixed-large, fixed-small, or learned-range")


def add_guidance(p, default_help: str | None = None) -> None:
    """The --guidance and --guidance-interval flags of the commands that draw from class-conditional runs."""
    p.add_argument("--guidance", type=non_negative_float, default=_DEFAULT.guidance, metavar="W",
                   help="classifier-free guidance weight w: eps~ = (1 + w) eps(x, t, y) - w eps(x, t); 0 is purely "
                        "conditional, larger is more typical of the class and less varied (the 'guidance scale' of "
                        "other libraries is 1 + w) " + (default_help or f"(default: {DEFAULT_GUIDANCE:g} with a class "
                        "flag; without one, a conditional run draws every class in turn, with w = 0 unless this flag "
                        "is given)"))
    p.add_argument("--guidance-interval", type=t_range, default=_DEFAULT.guidance_interval, metavar="LO-HI",
                   help="guide only the steps with the paper's t in LO..HI, the conditional pass alone elsewhere "
                        "(Kynkaanniemi et al. 2024; the steps outside cost half as much); default: every step")


def sampling_from_args(args) -> SamplingConfig:
    """The :class:`ddpm.SamplingConfig` the sampling flags on a command line ask for (a flag a command does not
    have keeps the default); its ValueError becomes the one-line error naming the flag."""
    fields = {"sampler": "sampler", "steps": "steps", "spacing": "spacing", "variance": "variance", "eta": "eta",
              "guidance": "guidance", "guidance_interval": "guidance_interval"}
    values = {field: getattr(args, dest) for field, dest in fields.items() if hasattr(args, dest)}
    if hasattr(args, "no_clip"):
        values["clip_denoised"] = not args.no_clip
    with sampling_errors():
        return SamplingConfig(**values)


def add_device_and_progress(p: argparse.ArgumentParser, device_default: str | None = "auto") -> None:
    """The --device and --no-progress flags every command shares."""
    p.add_argument("--device", default=device_default, help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


#: the positional arguments that name a run folder, in the commands that read one
_RUN_ARGS = ("run", "source")


def add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand below ``parser`` that reads a run folder (``ddpm sample``, ``eval``, ``edit``,
    ``inpaint``, ``export``, ``serve`` ...) the ``--checkpoint`` flag that :func:`apply_checkpoint_flag` applies."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if name != "train":
                    add_checkpoint_flag(sub)
    if any(a.dest in _RUN_ARGS and not a.option_strings for a in parser._actions):
        parser.add_argument("--checkpoint", default=None, metavar="WHICH",
                            help="which checkpoint of the run: latest (the default), best (checkpoints/best, the best "
                                 "quality measured by ddpm train --eval-every), or a step (2000 or step_0002000)")


def apply_checkpoint_flag(args) -> None:
    """Replace the run folder in ``args`` by the checkpoint folder ``--checkpoint`` names (before any work)."""
    which = getattr(args, "checkpoint", None)
    if which is None:
        return
    dest = next(d for d in _RUN_ARGS if getattr(args, d, None) is not None)
    setattr(args, dest, str(resolve_checkpoint(getattr(args, dest), which)))
