"""``ddpm import`` and ``ddpm export``: flags -> :mod:`ddpm.runs.diffusers_io` (the diffusers format, in and out)."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from ..core.diffusion import VARIANCE_TYPES
from ..core.schedule import SCHEDULE_KINDS, ScheduleConfig
from ..model.unet import UNet, count_parameters
from ..runs.checkpoint import ANALYTIC_FILE, latest_checkpoint
from ..runs.config import TrainConfig
from ..runs.diffusers_io import export_diffusers, import_diffusers
from .args import add_weights, at_least
from .errors import UserError, checked

__all__ = ["register", "IMPORT_EXAMPLES", "EXPORT_EXAMPLES"]

IMPORT_EXAMPLES = """examples:
  ddpm import ddpm-cifar10-32 runs/cifar10-paper    # a DDPMPipeline folder: model_index.json, unet/, scheduler/
  ddpm import ddpm-cifar10-32 runs/cifar10-large --variance fixed-large   # sigma_t^2 = beta_t, sampling and bound
  ddpm import my-unet runs/mine --timesteps 1000 --beta-start 0.0001 --beta-end 0.02   # a bare UNet2DModel folder
  ddpm sample runs/cifar10-paper --sampler ddim --steps 50   # then every command reads it like a trained run
  ddpm train --init-from runs/cifar10-paper --data my_images/ --channels 3 --run-dir runs/finetuned
"""

EXPORT_EXAMPLES = """examples:
  ddpm export runs/digits exported/digits           # then DDPMPipeline.from_pretrained("exported/digits")
  ddpm export runs/digits exported/digits-raw --weights model
  ddpm export runs/digits/checkpoints/step_0002000 exported/digits-2k
"""


def register(sub) -> None:
    """Add ``ddpm import`` and ``ddpm export`` to the subcommands ``sub``."""
    sched = ScheduleConfig()
    p = sub.add_parser("import", help="make a run folder of a diffusers DDPM model (the paper's own networks)",
                       description="Read a diffusers model folder (a DDPMPipeline: model_index.json, unet/, "
                                   "scheduler/; or a bare UNet2DModel folder with the schedule given by flags) and "
                                   "write a ddpm run folder that ddpm sample, eval, study and train --init-from "
                                   "read (with the analytic-variance estimate a ddpm export carried, so the "
                                   "defaults draw as from the exported run).  diffusers itself is not needed; .bin "
                                   "weights are read with torch.load(weights_only=True), so nothing in them runs.",
                       epilog=IMPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="the diffusers folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder to write (new, or empty)")
    p.add_argument("--variance", choices=VARIANCE_TYPES, default=None,
                   help="sigma_t^2 of Algorithm 2 and of the bound (default: the scheduler's variance_type, "
                        "else fixed-large)")
    p.add_argument("--image-size", type=at_least(1), default=None,
                   help="the side the network was trained at, for a config.json without sample_size")
    g = p.add_argument_group("schedule of a bare UNet2DModel folder (a pipeline folder brings its own)")
    g.add_argument("--schedule", choices=SCHEDULE_KINDS, default=None, help=f"beta schedule (default: {sched.kind})")
    g.add_argument("--timesteps", type=at_least(1), default=None, help=f"T (default: {sched.num_timesteps})")
    g.add_argument("--beta-start", type=float, default=None,
                   help=f"beta_1 of the linear schedule (default: {sched.beta_start:g})")
    g.add_argument("--beta-end", type=float, default=None,
                   help=f"beta_T of the linear schedule (default: {sched.beta_end:g})")
    p.set_defaults(func=_run_import)

    e = sub.add_parser("export", help="write a run as a diffusers DDPMPipeline folder",
                       description="Write a run's weights as a folder that diffusers.DDPMPipeline.from_pretrained "
                                   "loads: the network as a UNet2DModel (safetensors), the betas, variance type and "
                                   "x_0 clipping as a DDPMScheduler, the run's config and the checkpoint's stored "
                                   "analytic-variance estimate as ddpm_config.json, and a model card (README.md) "
                                   "with the bound and sample quality measured on the run.",
                       epilog=EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", metavar="RUN", help="run folder (or one checkpoint folder inside it)")
    e.add_argument("out", metavar="OUT", help="the folder to write (new, or empty)")
    e.add_argument("--format", choices=["diffusers"], default="diffusers", help="(default: %(default)s)")
    add_weights(e)
    e.set_defaults(func=_run_export)


def _schedule(args) -> ScheduleConfig | None:
    given = {k: v for k, v in {"kind": args.schedule, "num_timesteps": args.timesteps, "beta_start": args.beta_start,
                               "beta_end": args.beta_end}.items() if v is not None}
    if not given:
        return None
    if args.schedule == "cosine" and (args.beta_start is not None or args.beta_end is not None):
        raise UserError("--beta-start and --beta-end set the linear schedule; the cosine one has no such ends")
    return checked(lambda: replace(ScheduleConfig(), **given), None, flags=vars(args))


def _run_import(args) -> int:
    run_dir = import_diffusers(args.src, args.run_dir, schedule=_schedule(args), variance=args.variance,
                               image_size=args.image_size)
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    with torch.device("meta"):  # the parameter count, without the weights
        params = count_parameters(UNet(cfg.model))
    s = cfg.schedule
    betas = f"linear {s.beta_start:g} to {s.beta_end:g}" if s.kind == "linear" else "cosine"
    carried = (latest_checkpoint(run_dir) / ANALYTIC_FILE).is_file()
    print(f"imported {args.src} into {run_dir}: {params:,} parameters, "
          f"{cfg.model.image_size}x{cfg.model.image_size}x{cfg.model.in_channels}, T = {s.num_timesteps} ({betas}), "
          f"variance {cfg.variance}{', with the analytic-variance estimate of the export' if carried else ''}")
    print(f"next: ddpm sample {run_dir}")
    return 0


def _run_export(args) -> int:
    out = export_diffusers(args.run, args.out, which=args.weights)
    print(f"{args.run} ({args.weights} weights) written to {out} as a diffusers DDPMPipeline folder (model_index.json, "
          "unet/, scheduler/, ddpm_config.json, README.md)")
    return 0
