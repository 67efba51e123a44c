"""``ddpm ema``: post-hoc EMA (Karras et al. 2024) of a run trained with ``--ema-snapshot-every``: flags -> calls
into :mod:`ddpm.training.ema` (one length, written as a checkpoint folder) and :mod:`ddpm.evaluation.ema_sweep`
(a range of lengths, scored)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from ..core.ema import gamma_from_sigma_rel
from ..data.embedded import DIGIT_CLASSES
from ..evaluation.ema_sweep import DEFAULT_SWEEP, ema_sweep
from ..sampling.config import SamplingConfig
from ..sampling.generate import generate, load_run
from ..training.ema import SNAPSHOT_DIR, default_ema_dir, snapshots, write_ema_checkpoint
from .args import (
    add_device_and_progress,
    add_sampler_and_steps,
    add_sampling_variance,
    add_spacing,
    at_least,
    sampling_from_args,
)
from .errors import UserError, check_out_dir, refuse_file_as_folder, sampling_errors

__all__ = ["register", "EMA_EXAMPLES", "SWEEP_ONLY", "sigma_rel_value", "sigma_rel_list"]

EMA_EXAMPLES = """examples:
  ddpm train --preset digits-fast --ema-snapshot-every 100 --run-dir runs/posthoc
  ddpm ema runs/posthoc --sigma-rel 0.08          # writes runs/posthoc/ema/sigma_rel_0.080/, a checkpoint folder
  ddpm sample runs/posthoc/ema/sigma_rel_0.080 -n 64
  ddpm ema runs/posthoc --sweep -n 1000 --seed 1  # FD against EMA length: runs/posthoc/ema/sweep.png, sweep.json
"""


#: the flags of --sweep alone, with their defaults (given with --sigma-rel, they are refused)
SWEEP_ONLY = {"sigma_rels": DEFAULT_SWEEP, "num": 1000, "seed": 1, "batch_size": 250,
              "sampler": SamplingConfig.sampler, "steps": None, "spacing": None, "variance": None}


def sigma_rel_value(value: str) -> float:
    """An argparse type: an EMA length sigma_rel in (0, 0.3), the range of EDM2's eq. 8."""
    try:
        s = float(value)
        gamma_from_sigma_rel(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an EMA length sigma_rel in (0, 0.3), got {value!r}") from None
    return s


def sigma_rel_list(value: str) -> tuple[float, ...]:
    """An argparse type: comma-separated EMA lengths."""
    out = tuple(sigma_rel_value(v) for v in value.split(",") if v.strip())
    if not out:
        raise argparse.ArgumentTypeError("expected at least one EMA length")
    return out


def register(sub) -> None:
    p = sub.add_parser("ema", help="post-hoc EMA: the EMA of any length, after training (--ema-snapshot-every)",
                       description="Post-hoc EMA (Karras et al. 2024, Sec. 3): reconstruct, from the snapshots of the "
                                   "two power-function EMAs a run tracked (ddpm train --ema-snapshot-every N), the EMA "
                                   "of any length sigma_rel by least squares, and write it as a checkpoint folder "
                                   "that ddpm sample, eval, export and serve read; or score a range of lengths with "
                                   "the classifier FD beside the run's fixed EMA.",
                       epilog=EMA_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder trained with --ema-snapshot-every")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sigma-rel", type=sigma_rel_value, default=None, metavar="S",
                      help="the EMA length to reconstruct (EDM2's sigma_rel: 0.05 and 0.10 are tracked)")
    what.add_argument("--sweep", action="store_true", help="score a range of EMA lengths (--sigma-rels)")
    p.add_argument("--sigma-rels", type=sigma_rel_list, default=DEFAULT_SWEEP, metavar="S1,S2,...",
                   help=f"the lengths --sweep scores (default: {','.join(f'{s:g}' for s in DEFAULT_SWEEP)})")
    p.add_argument("--out", default=None, help="output folder (default: RUN/ema/sigma_rel_S, or RUN/ema with --sweep)")
    p.add_argument("-n", "--num", type=at_least(2), default=SWEEP_ONLY["num"],
                   help="--sweep: samples per length (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="--sweep: base seed, the same for every length (default: 1)")
    p.add_argument("--batch-size", type=at_least(1), default=250, help="--sweep: samples per batch (default: 250)")
    add_sampler_and_steps(p)
    add_spacing(p)
    add_sampling_variance(p)
    add_device_and_progress(p)
    p.set_defaults(func=_run_ema)


def _run_ema(args) -> int:
    run_dir = Path(args.run)
    refuse_file_as_folder(args.out, "--out")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.json); pass the folder ddpm train wrote")
    found = snapshots(run_dir)
    if not found:
        raise UserError(f"{run_dir}: holds no EMA snapshots ({SNAPSHOT_DIR}/); post-hoc EMA needs a run trained "
                        "with --ema-snapshot-every N")
    if not args.sweep:
        given = [f"--{k.replace('_', '-')}" for k, v in SWEEP_ONLY.items() if getattr(args, k) != v]
        if given:
            raise UserError(f"{given[0]} applies to --sweep; drop it, or pass --sweep instead of --sigma-rel")
        out = write_ema_checkpoint(run_dir, args.sigma_rel, args.out or default_ema_dir(run_dir, args.sigma_rel))
        print(f"EMA of length sigma_rel {args.sigma_rel:g} (gamma {gamma_from_sigma_rel(args.sigma_rel):.3f}) at step "
              f"{found[-1]['step']}, from {len(found)} snapshots, written to {out}; sample it with: ddpm sample {out}")
        return 0
    run = load_run(run_dir, device=args.device)
    with sampling_errors():
        config = sampling_from_args(args).for_run(run)  # what ddpm eval quality draws: every class in turn
    if run.config.data.source != "digits":  # as ddpm eval quality says it
        print(f"note: {run_dir} was trained on {run.config.data.source}; the classifier FD compares grey 32x32 "
              "images with the embedded MNIST test digits, so it measures closeness to those digits", file=sys.stderr)
    out = check_out_dir(args.out or run_dir / "ema")

    def draw(r):
        drawn = generate(r, args.num, config, seed=args.seed, batch_size=args.batch_size,
                         progress=not args.no_progress)
        return drawn.images, (drawn.labels if run.config.class_names == DIGIT_CLASSES else None)
    sampling = {**asdict(config), "n": args.num, "seed": args.seed}
    record = ema_sweep(run, run_dir, args.sigma_rels, draw, out, sampling=sampling)
    best = min(record["posthoc"], key=lambda r: r["fd"])
    print(f"best post-hoc length sigma_rel {best['sigma_rel']:g}: FD {best['fd']:.3f}; fixed EMA "
          + ", ".join(f"{f['decay']:g}: FD {f['fd']:.3f}" for f in record["fixed"]))
    print(f"written: {out / 'sweep.json'}, {out / 'sweep.png'}")
    return 0
