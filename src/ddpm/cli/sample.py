"""``ddpm sample``: flags -> :func:`ddpm.sampling.generate.sample`."""
from __future__ import annotations

import argparse

from ..runtime.distributed import resolve_device
from ..runtime.precision import SAMPLING_PRECISIONS
from ..sampling.config import parse_class
from ..sampling.defaults import class_labels
from ..sampling.generate import default_samples_dir, load_run, sample
from .args import (
    add_device_and_progress,
    add_eta,
    add_guidance,
    add_sampler_and_steps,
    add_sampling_variance,
    add_spacing,
    add_weights,
    at_least,
    sampling_from_args,
)
from .errors import (
    UserError,
    check_guidance_has_classes,
    check_out_dir,
    guidance_flags,
    refuse_file_as_folder,
    sampling_errors,
)

__all__ = ["register", "SAMPLE_EXAMPLES"]

SAMPLE_EXAMPLES = """examples:
  ddpm sample runs/digits                       # 64 samples: Algorithm 2, 100 quadratic steps, Analytic-DPM's variance
  ddpm sample runs/digits --variance fixed-large   # the paper's Algorithm 2: all 1000 steps, sigma^2 = beta_t
  ddpm sample runs/digits -n 16 --chain 8       # plus the denoising chain as a strip PNG and a GIF
  ddpm sample runs/digits --sampler ddim --steps 50 --eta 0
  ddpm sample runs/digits --sampler dpm++2m --steps 20 --out samples/fast
  ddpm sample runs/digits --sampler ddim --steps 50 --eta 1 --seed 7   # stochastic DDIM, other images
  ddpm sample runs/digits --precision bf16      # bf16 autocast on the CPU (1.2x faster where it is native)
  ddpm sample runs/demo                         # make demo's run is class-conditional: every digit in turn, w = 0
  ddpm sample runs/digits-cond --class 7 -n 16  # a class-conditional run (ddpm train --class-cond): sixteen 7s
  ddpm sample runs/digits-cond --classes 0,1,2 --guidance 2 --sampler ddim --steps 50   # 0, 1, 2, 0, 1, ...
  ddpm sample runs/digits-cond --per-class 8 --sampler ddim --steps 50   # a 10 x 8 grid, one row per digit
"""


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a trained run (Algorithm 2 and faster samplers)",
                       description="Generate images from a run folder's latest checkpoint (EMA weights by default).",
                       epilog=SAMPLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (or one checkpoint folder inside it)")
    p.add_argument("-n", "--num", type=at_least(1), default=None, help="number of samples (default: 64)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/samples/SAMPLER)")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample k has its own seed (default: 0)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="samples per batch (default: %(default)s)")
    add_sampler_and_steps(p)
    add_eta(p)
    add_spacing(p)
    add_sampling_variance(p)
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x_0 to [-1, 1]")
    add_weights(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_", metavar="C", default=None,
                       help="class-conditional runs: draw every sample of class C (its name, e.g. 7 for the digits, "
                            "or its index)")
    which.add_argument("--classes", metavar="C1,C2,...", default=None,
                       help="class-conditional runs: draw these classes in turn (sample k of the k-th mod their count)")
    which.add_argument("--per-class", type=at_least(1), metavar="K", default=None,
                       help="class-conditional runs: K samples of every class, the grid one row per class "
                            "(replaces -n: K x classes samples)")
    add_guidance(p)
    p.add_argument("--chain", type=at_least(0), default=0, metavar="K",
                   help="also save the denoising chain of the first K samples (strip PNG + GIF)")
    p.add_argument("--no-individual", action="store_true", help="skip the one-PNG-per-sample folder")
    add_device_and_progress(p)
    p.add_argument("--precision", choices=SAMPLING_PRECISIONS, default="auto",
                   help="network precision: auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 also on the CPU "
                        "(faster where it has native bf16) (default: auto)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay the network as a CUDA graph at every step (CUDA only; fewer kernel launches)")
    p.set_defaults(func=_run_sample)


def _class_index(names, token: str, flag: str) -> int:
    """A class given on the command line (:func:`ddpm.sampling.config.parse_class`), its error naming ``flag``."""
    try:
        return parse_class(names, token)
    except ValueError as e:
        raise UserError(f"{flag} {str(e).removeprefix('class ')}") from None


def _labels(args, run):
    """The per-sample labels the class flags ask for (None: none given), checked against the run."""
    flags = _class_flags(args)
    if not flags:
        return None
    names = run.config.class_names
    if names is None:
        raise UserError(f"{args.run}: an unconditional run (trained without class labels) cannot draw a chosen "
                        f"class; drop {flags[0]}, or train a class-conditional run with ddpm train --class-cond")
    if args.per_class is not None:
        return class_labels(len(names), per_class=args.per_class)
    n = args.num if args.num is not None else 64
    if args.class_ is not None:
        return class_labels(len(names), n, classes=_class_index(names, args.class_, "--class"))
    tokens = [c for c in args.classes.split(",") if c.strip()]
    if not tokens:
        raise UserError(f"--classes {args.classes!r}: name at least one class, e.g. --classes 0,1,2")
    return class_labels(len(names), n, classes=[_class_index(names, c, "--classes") for c in tokens])


def _shown(names, labels: list[int]) -> str:
    """The classes drawn, by name, each once in order of first appearance."""
    return ",".join(names[k] for k in dict.fromkeys(labels))


def _class_flags(args) -> list[str]:
    return [f for f, v in (("--class", args.class_), ("--classes", args.classes), ("--per-class", args.per_class))
            if v is not None]


def _run_sample(args) -> int:
    if args.per_class is not None and args.num is not None:
        raise UserError(f"--per-class {args.per_class} draws {args.per_class} samples of every class; drop -n")
    sampling = sampling_from_args(args)  # refuses what does not fit together (eta, variance, interval) in one line
    if args.cuda_graph:
        if (device := resolve_device(args.device)).type != "cuda":
            raise UserError(f"--cuda-graph needs a CUDA device, but this would sample on {device}; drop the flag")
    if args.num is not None and args.chain > args.num:
        raise UserError(f"--chain {args.chain}: only -n {args.num} samples are drawn; pass --chain {args.num} or less")
    refuse_file_as_folder(args.out, "--out")  # before loading the run; check_out_dir below tries a write
    run = load_run(args.run, which=args.weights, device=args.device)
    check_guidance_has_classes(guidance_flags(args), run, args.run)
    labels = _labels(args, run)
    n = len(labels) if labels is not None else args.num if args.num is not None else 64
    if args.chain > n:
        raise UserError(f"--chain {args.chain}: only {n} samples are drawn; pass --chain {n} or less")
    with sampling_errors():
        sampling = sampling.for_run(run, classes_asked=labels is not None)
    out = check_out_dir(args.out or default_samples_dir(run, sampling.sampler))
    out = sample(run, n, out, sampling, individual=not args.no_individual, chain_samples=args.chain,
                 grid_width=args.per_class, seed=args.seed, batch_size=args.batch_size, cuda_graph=args.cuda_graph,
                 precision=args.precision, progress=not args.no_progress, labels=labels)
    names = run.config.class_names
    drawn = ""
    if names is not None:
        shown = labels if labels is not None else class_labels(len(names), n)
        drawn = f", classes {_shown(names, shown)}, guidance w = {sampling.guidance:g}"
    if args.guidance_interval is not None:
        drawn += " for t in {}..{}".format(*args.guidance_interval)
    print(f"samples of {run.checkpoint} ({args.weights} weights{drawn}) written to {out} (grid.png, samples.npz"
          f"{', images/' if not args.no_individual else ''}{', chain.png, chain.gif' if args.chain else ''})")
    return 0
