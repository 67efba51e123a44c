"""argparse value types shared by the ``ddpm`` subcommands: a bad number is refused while the command line
is parsed, before any run is loaded or any file is written."""
from __future__ import annotations

import argparse

from ..core.diffusion import VARIANCE_TYPES
from ..core.respace import SPACINGS
from ..core.samplers import DEFAULT_FAST_STEPS, SAMPLERS
from ..runs.checkpoint import WEIGHT_SETS, resolve_checkpoint
from ..sampling.defaults import DEFAULT_ANALYTIC_SPACING, DEFAULT_ANALYTIC_STEPS, DEFAULT_SAMPLER
from ..sampling.variance import ANALYTIC


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
    """The --weights flag of the commands that read a run: the EMA weights (the default) or the trained ones."""
    p.add_argument("--weights", choices=WEIGHT_SETS, default=WEIGHT_SETS[0], help=f"{help} (default: %(default)s)")


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
