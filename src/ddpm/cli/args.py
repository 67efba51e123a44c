"""argparse value types shared by the ``ddpm`` subcommands: a bad number is refused while the command line
is parsed, before any run is loaded or any file is written."""
from __future__ import annotations

import argparse

from ..core.diffusion import VARIANCE_TYPES
from ..core.respace import SPACINGS
from ..core.samplers import DEFAULT_FAST_STEPS, SAMPLERS
from ..runs.checkpoint import WEIGHT_SETS
from ..sampling.defaults import DEFAULT_ANALYTIC_SPACING, DEFAULT_ANALYTIC_STEPS, DEFAULT_SAMPLER
from ..sampling.variance import ANALYTIC

__all__ = ["at_least", "int_list", "float_list", "weights_choice", "t_range", "positive_float", "non_negative_float",
           "add_weights", "add_sampler_and_steps", "add_spacing", "add_sampling_variance", "add_device_and_progress"]


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


def int_list(value: str) -> tuple[int, ...]:
    """An argparse type: comma-separated whole numbers, e.g. ``1,2,2``."""
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


def float_list(value: str) -> tuple[float, ...]:
    """An argparse type: comma-separated numbers, e.g. ``0.999,0.9999``."""
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


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


def add_sampler_and_steps(p) -> None:
    """The --sampler and --steps flags of the commands that draw samples, with their defaults
    (:mod:`ddpm.sampling.defaults`)."""
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                   help="ddpm = ancestral (Algorithm 2), ddim, dpm++2m (default: %(default)s)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help=f"sampling steps (default: ddpm {DEFAULT_ANALYTIC_STEPS} with the analytic variance, all T "
                        f"with another; {DEFAULT_FAST_STEPS} for the others)")


def add_spacing(p) -> None:
    """The --spacing flag of the commands that draw samples: which of the T steps a shortened sampler visits."""
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help=f"which timesteps a shortened sampler visits (default: {DEFAULT_ANALYTIC_SPACING} for ddpm "
                        "with the analytic variance where the schedule leaves under 5%% of the image at 0.8 T, as the "
                        "paper's does; logsnr for dpm++2m; else uniform)")


def add_sampling_variance(p) -> None:
    """The --variance flag of the commands that draw samples: Algorithm 2's sigma_t^2."""
    p.add_argument("--variance", default=None, choices=(*VARIANCE_TYPES, ANALYTIC),
                   help="sigma_t^2 for ddpm: analytic, Analytic-DPM's optimal sigma_t^2 (Bao et al. 2022), estimated "
                        "from the run's training data before the first step (the default where that data is at "
                        "hand; elsewhere the run's own), or the paper's fixed-large, fixed-small, or learned-range")


def add_device_and_progress(p: argparse.ArgumentParser, device_default: str | None = "auto") -> None:
    """The --device and --no-progress flags every command shares."""
    p.add_argument("--device", default=device_default, help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
