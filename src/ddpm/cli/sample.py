"""``ddpm sample``: flags -> :func:`ddpm.sampling.generate.sample`."""
from __future__ import annotations

import argparse

from ..core.diffusion import VARIANCE_TYPES
from ..core.respace import SPACINGS
from ..core.samplers import SAMPLERS, steps_or_default
from ..runtime.distributed import resolve_device
from ..runtime.precision import SAMPLING_PRECISIONS
from ..sampling.generate import default_samples_dir, load_run, sample
from .args import add_device_and_progress, at_least
from .errors import UserError, check_out_dir, check_steps, refuse_file_as_folder

__all__ = ["register", "SAMPLE_EXAMPLES"]

SAMPLE_EXAMPLES = """examples:
  ddpm sample runs/digits                       # 64 samples, 1000-step ancestral sampling (Algorithm 2)
  ddpm sample runs/digits -n 16 --chain 8       # plus the denoising chain as a strip PNG and a GIF
  ddpm sample runs/digits --sampler ddim --steps 50 --eta 0
  ddpm sample runs/digits --sampler dpm++2m --steps 20 --out samples/fast
  ddpm sample runs/digits --sampler ddim --steps 50 --eta 1 --seed 7   # stochastic DDIM, other images
  ddpm sample runs/digits --precision bf16      # bf16 autocast on the CPU (1.2x faster where it is native)
"""


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a trained run (Algorithm 2 and faster samplers)",
                       description="Generate images from a run folder's latest checkpoint (EMA weights by default).",
                       epilog=SAMPLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (or one checkpoint folder inside it)")
    p.add_argument("-n", "--num", type=at_least(1), default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/samples/SAMPLER)")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample k has its own seed (default: 0)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="samples per batch (default: %(default)s)")
    p.add_argument("--sampler", default="ddpm", choices=SAMPLERS,
                   help="ddpm = ancestral (Algorithm 2), ddim, dpm++2m (default: %(default)s)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="sampling steps (default: all T for ddpm, 50 otherwise)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default: 0, deterministic)")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="which timesteps a shortened sampler visits (default: logsnr for dpm++2m, else uniform)")
    p.add_argument("--variance", default=None, choices=VARIANCE_TYPES,
                   help="sigma_t^2 for ddpm (default: the run's)")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x_0 to [-1, 1]")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default: ema)")
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


def _run_sample(args) -> int:
    if not 0.0 <= args.eta <= 1.0:
        raise UserError(f"--eta must lie in [0, 1], got {args.eta}")
    if args.cuda_graph:
        if (device := resolve_device(args.device)).type != "cuda":
            raise UserError(f"--cuda-graph needs a CUDA device, but this would sample on {device}; drop the flag")
    if args.eta != 0.0 and args.sampler != "ddim":
        raise UserError(f"--eta applies to --sampler ddim only, not {args.sampler}; drop --eta or add --sampler ddim")
    if args.variance in ("fixed-large", "fixed-small") and args.sampler != "ddpm":
        how = "takes its noise from --eta" if args.sampler == "ddim" else "adds no noise"
        raise UserError(f"--variance {args.variance} sets Algorithm 2's sigma_t, for --sampler ddpm only; "
                         f"{args.sampler} {how}")
    if args.spacing is not None and args.sampler == "ddpm" and args.steps is None:
        raise UserError(f"--spacing {args.spacing} picks the steps a shortened sampler keeps; ddpm without --steps "
                         "runs all T of them; add --steps or drop --spacing")
    if args.chain > args.num:
        raise UserError(f"--chain {args.chain}: only -n {args.num} samples are drawn; pass --chain {args.num} or less")
    refuse_file_as_folder(args.out, "--out")  # before loading the run; check_out_dir below tries a write
    steps = steps_or_default(args.sampler, args.steps)
    run = load_run(args.run, which=args.weights, device=args.device)
    trained, mc = run.config.variance, run.config.model
    if args.variance and (args.variance == "learned-range") != (mc.output_channels == 2 * mc.in_channels):
        raise UserError(f"{args.run}: a network trained with --variance {trained} cannot be sampled with "
                         f"--variance {args.variance} (learned-range needs the variance outputs); drop --variance")
    check_steps(steps, run, given=args.steps is not None)
    out = check_out_dir(args.out or default_samples_dir(run, args.sampler))
    out = sample(run, args.num, out, individual=not args.no_individual, chain_samples=args.chain,
                 seed=args.seed, batch_size=args.batch_size, sampler=args.sampler, steps=steps, eta=args.eta,
                 spacing=args.spacing, variance=args.variance, clip_denoised=not args.no_clip,
                 cuda_graph=args.cuda_graph, precision=args.precision, progress=not args.no_progress)
    print(f"samples of {run.checkpoint} ({args.weights} weights) written to {out} (grid.png, samples.npz"
          f"{', images/' if not args.no_individual else ''}{', chain.png, chain.gif' if args.chain else ''})")
    return 0


