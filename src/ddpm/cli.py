"""``ddpm`` command line: flags -> config -> calls into the library.  No maths here."""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

from .cli_args import add_device_and_progress, at_least, int_list, positive_float

__all__ = ["main", "build_parser"]

TRAIN_EXAMPLES = """examples:
  ddpm train                                   # small preset on the embedded MNIST digits (train split)
  ddpm train --steps 20000 --run-dir runs/long
  ddpm train --data path/to/images --image-size 64 --channels 3 --preset cifar10 --hflip
  ddpm train --data faces.npz --loss hybrid --variance learned-range
  ddpm train --preset tiny --attention-resolutions 16 --base-channels 8  # the tiny net, reshaped for 32x32
  ddpm train --resume runs/digits --steps 8000  # go on from the last checkpoint (cosine decay now ends at 8000)
  torchrun --standalone --nproc_per_node=8 -m ddpm train --batch-size 16   # 8 GPUs, global batch 128
"""

SAMPLE_EXAMPLES = """examples:
  ddpm sample runs/digits                       # 64 samples, 1000-step ancestral sampling (Algorithm 2)
  ddpm sample runs/digits -n 16 --chain 8       # plus the denoising chain as a strip PNG and a GIF
  ddpm sample runs/digits --sampler ddim --steps 50 --eta 0
  ddpm sample runs/digits --sampler dpm++2m --steps 20 --out samples/fast
  ddpm sample runs/digits --sampler ddim --steps 50 --eta 1 --seed 7   # stochastic DDIM, other images
  ddpm sample runs/digits --precision bf16      # bf16 autocast on the CPU (1.2x faster where it is native)
"""


def _on_off(value: str) -> str:
    v = value.lower()
    if v not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError("expected auto, on or off")
    return v


def _add_train(sub):
    from .diffusion import VARIANCE_TYPES
    from .unet import PRESETS

    p = sub.add_parser("train", help="train a noise predictor with Algorithm 1",
                       description="Train eps_theta(x_t, t) with the DDPM objective (Ho et al. 2020, Algorithm 1).",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint "
                   "(its saved config is used; only --steps, --device and --no-progress apply)")
    p.add_argument("--run-dir", default="runs/digits", help="where config, metrics, previews and checkpoints go "
                   "(default: %(default)s)")
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                   help="U-Net: digits (1.1M parameters, 32x32 grey), cifar10 (the paper's 35.7M, 32x32 colour), tiny "
                        "(for tests on 8x8 images: add --image-size 8) (default: %(default)s)")
    p.add_argument("--base-channels", type=at_least(1), default=None,
                   help="override the preset's width at full resolution")
    p.add_argument("--channel-mult", type=int_list, default=None, metavar="M1,M2,...",
                   help="override the preset's width multiplier per level, e.g. 1,2,2,2 (one level per entry)")
    p.add_argument("--num-res-blocks", type=at_least(1), default=None,
                   help="override the preset's residual blocks per level")
    p.add_argument("--attention-resolutions", type=int_list, default=None, metavar="R1,R2,...",
                   help="override the feature-map sizes (pixels) that get self-attention, e.g. 16 or 16,8")
    p.add_argument("--data", default="digits", help="'digits' (embedded MNIST, 4,500 train / 500 test), "
                   "'sklearn-digits', a folder of images, or a .npy/.npz file (default: %(default)s)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"],
                   help="split of the embedded datasets to train on (default: %(default)s)")
    p.add_argument("--image-size", type=at_least(1), default=None,
                   help="side of the square images (default: 32)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="1 (grey) or 3 (RGB) (default: what --data holds; 1 for the embedded digits)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (off for digits)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="optimisation steps in total (default: 3000 for the digits preset, else 4000)")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="images per step per device (default: 64)")
    p.add_argument("--grad-accum", type=at_least(1), default=None, help="micro-batches per step (default: 1)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="AdamW peak learning rate (default: 1e-3 for the digits preset, else 2e-4)")
    p.add_argument("--warmup-steps", type=at_least(0), default=None,
                   help="steps of linear learning-rate warm-up (default: 100)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="after warm-up: constant, or cosine decay to 0 at --steps "
                        "(default: cosine for the digits preset, else constant)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default: 0.9999, with warm-up)")
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--loss", choices=["simple", "vlb", "hybrid"], default=None,
                   help="L_simple (eq. 14), L_vlb, or L_simple + lambda L_vlb (default: simple)")
    p.add_argument("--hybrid-lambda", type=float, default=None, help="lambda of the hybrid loss (default: 0.001)")
    p.add_argument("--variance", choices=list(VARIANCE_TYPES), default=None,
                   help="sigma_t^2: beta_t, beta~_t or learned (default: fixed-large)")
    p.add_argument("--importance-sampling", action="store_true", help="sample t by the history of L_vlb terms")
    p.add_argument("--schedule", choices=["linear", "cosine"], default=None, help="beta schedule (default: linear)")
    p.add_argument("--timesteps", type=at_least(1), default=None, help="T (default: 1000)")
    p.add_argument("--beta-start", type=float, default=None, help="beta_1 of the linear schedule (default: 1e-4)")
    p.add_argument("--beta-end", type=float, default=None, help="beta_T of the linear schedule (default: 0.02)")
    p.add_argument("--seed", type=int, default=None, help="seed of init, data order and noise (default: 0)")
    p.add_argument("--log-every", type=at_least(1), default=None, help="steps between metric rows (default: 50)")
    p.add_argument("--sample-every", type=at_least(1), default=None, help="steps between preview grids (default: 1000)")
    p.add_argument("--checkpoint-every", type=at_least(1), default=None,
                   help="steps between checkpoints (default: 1000)")
    p.add_argument("--keep-checkpoints", type=at_least(1), default=None, help="checkpoints kept (default: 3)")
    add_device_and_progress(p, device_default=None)  # None: a resume keeps the run's device unless told
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="autocast dtype; auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--compile", type=_on_off, default=None,
                   help="torch.compile: auto (on for CUDA where Triton is installed; eager if the first step "
                        "fails to compile), on, off")
    p.set_defaults(func=_run_train)


def _train_config_from_args(args):
    from dataclasses import replace

    from .config import TrainConfig
    from .data import DataConfig
    from .schedule import ScheduleConfig
    from .unet import UNetConfig, preset

    defaults = TrainConfig()
    model_over = {k: v for k, v in {"dropout": args.dropout, "base_channels": args.base_channels,
                                    "channel_mult": args.channel_mult, "num_res_blocks": args.num_res_blocks,
                                    "attention_resolutions": args.attention_resolutions}.items() if v is not None}
    from .data import EMBEDDED, native_shape
    # a path is saved absolute, so that the run can be resumed or evaluated from any folder
    source = args.data if args.data in EMBEDDED or not Path(args.data).exists() else str(Path(args.data).resolve())
    channels = args.channels
    if channels is None:  # colour data trains in colour unless told otherwise
        on_disk = source not in EMBEDDED and Path(source).exists()
        channels = native_shape(source)[0] if on_disk else defaults.data.channels
    data = DataConfig(source=source, image_size=args.image_size or defaults.data.image_size,
                      channels=channels, split=args.split, hflip=args.hflip)
    model = preset(args.preset)
    if model_over:  # checked at the data's image size, where the network will run
        model = UNetConfig.from_dict({**model.to_dict(), **model_over, "image_size": data.image_size,
                                      "in_channels": data.channels})
    if args.schedule == "cosine" and (args.beta_start is not None or args.beta_end is not None):
        raise ValueError("--beta-start and --beta-end set the linear schedule; the cosine one has no such ends")
    sched = {k: v for k, v in {"kind": args.schedule, "num_timesteps": args.timesteps, "beta_start": args.beta_start,
                               "beta_end": args.beta_end}.items() if v is not None}
    schedule = replace(ScheduleConfig(), **sched)
    flat = {"run_dir": args.run_dir, "steps": args.steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "lr": args.lr, "warmup_steps": args.warmup_steps,
            "lr_schedule": args.lr_schedule, "ema_decay": args.ema_decay, "loss": args.loss,
            "hybrid_lambda": args.hybrid_lambda, "variance": args.variance, "seed": args.seed,
            "log_every": args.log_every, "sample_every": args.sample_every, "checkpoint_every": args.checkpoint_every,
            "keep_checkpoints": args.keep_checkpoints, "device": args.device, "precision": args.precision,
            "compile": args.compile}
    flat = {k: v for k, v in flat.items() if v is not None}
    if args.preset in PRESET_RECIPES:
        flat = {**PRESET_RECIPES[args.preset], **flat}
    return TrainConfig(model=model, schedule=schedule, data=data, importance_sampling=args.importance_sampling,
                       progress=not args.no_progress, **flat)


#: training defaults that go with a preset (flags still override them)
PRESET_RECIPES = {"digits": {"lr": 1e-3, "batch_size": 64, "steps": 3000, "lr_schedule": "cosine"}}


def _run_train(args) -> int:
    import json

    from .config import TrainConfig
    from .train import train

    if args.resume:
        cfg_path = Path(args.resume) / "config.json"
        if not cfg_path.is_file():
            raise _UserError(f"{args.resume}: not a run folder (no config.json); nothing to resume")
        try:
            saved = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise _UserError(f"{cfg_path}: unreadable JSON ({e})") from None
        _check_resume_flags(args, saved)
        saved["run_dir"] = str(args.resume)
        for key, value in (("steps", args.steps), ("device", args.device)):
            if value is not None:
                saved[key] = value
        saved["progress"] = not args.no_progress
        config = _checked(lambda: TrainConfig.from_dict(saved), cfg_path)
        out = train(config, resume=True)
    else:
        refuse_file_as_folder(args.run_dir, "--run-dir")
        config = _checked(lambda: _train_config_from_args(args), None, flags=vars(args))
        if args.warmup_steps is not None and config.warmup_steps >= config.steps:
            warnings.warn(f"--warmup-steps {config.warmup_steps} is not below --steps {config.steps}: the learning "
                          f"rate never reaches --lr {config.lr:g}")
        out = train(config)  # refuses a folder that already holds checkpoints
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 speaks
        print(f"run saved in {out}")
    return 0


#: the flags that ``ddpm train --resume`` takes; the run's other settings come from its config.json
RESUME_FLAGS = ("resume", "steps", "device", "no_progress")


def _check_resume_flags(args, saved: dict) -> None:
    """Refuse flags a resume would ignore and a --steps the run has already reached; say when there is nothing
    left to train, and when --steps stretches a cosine learning-rate schedule (it is a function of the total
    steps, so the rate at the current step moves)."""
    from .checkpoint import CheckpointError, latest_checkpoint

    defaults = vars(build_parser().parse_args(["train"]))
    ignored = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and k != "func" and v != defaults.get(k)]
    if ignored:
        flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
        raise _UserError(f"{flags}: --resume continues {args.resume} with the settings in its config.json and takes "
                         "only --steps, --device and --no-progress; drop the others or start a new run")
    try:
        done = int(latest_checkpoint(args.resume).name[5:])
    except (CheckpointError, ValueError):
        return  # the trainer says what is wrong with the folder
    if args.steps is not None and args.steps <= done:
        raise _UserError(f"--steps {args.steps}: {args.resume} is already at step {done}; pass a larger total")
    if args.steps is None:
        total = saved.get("steps")
        if isinstance(total, int) and done >= total and os.environ.get("RANK", "0") == "0":
            print(f"note: {args.resume} is already at step {done} of {total}; nothing to train (pass --steps N "
                  f"above {done} to go further)", file=sys.stderr)
        return
    if saved.get("lr_schedule") == "cosine" and args.steps != saved.get("steps"):
        from .train import lr_at
        lr, warm = saved.get("lr", 0.0), saved.get("warmup_steps", 0)
        before = lr_at(done, lr, warm, "cosine", saved.get("steps"))
        after = lr_at(done, lr, warm, "cosine", args.steps)
        print(f"note: the cosine learning-rate schedule now ends at step {args.steps} instead of {saved.get('steps')}; "
              f"the rate at step {done} goes from {before:.3g} to {after:.3g}", file=sys.stderr)


def refuse_file_as_folder(path, flag: str) -> None:
    """Refuse an output folder argument that names an existing file, before any work."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise _UserError(f"{flag} {path}: is a file; pass a folder")


def check_out_dir(path, flag: str = "--out") -> Path:
    """Make sure the output folder ``path`` can be written before any work: create it (with its parents) and a
    scratch file in it.  A file in the way, no permission or a read-only disk is one line naming ``flag``."""
    refuse_file_as_folder(path, flag)
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(scratch)
    except OSError as e:
        raise _UserError(f"{flag} {path}: cannot write there ({e.strerror or e}); "
                         "pass a folder you can write to") from None
    return path


def _add_sample(sub):
    p = sub.add_parser("sample", help="generate images from a trained run (Algorithm 2 and faster samplers)",
                       description="Generate images from a run folder's latest checkpoint (EMA weights by default).",
                       epilog=SAMPLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (or one checkpoint folder inside it)")
    p.add_argument("-n", "--num", type=at_least(1), default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/samples/SAMPLER)")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample k has its own seed (default: 0)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="samples per batch (default: %(default)s)")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim", "dpm++2m"],
                   help="ddpm = ancestral (Algorithm 2), ddim, dpm++2m (default: %(default)s)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help="sampling steps (default: all T for ddpm, 50 otherwise)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default: 0, deterministic)")
    p.add_argument("--spacing", choices=["uniform", "quadratic", "trailing", "logsnr"], default=None,
                   help="which timesteps a shortened sampler visits (default: logsnr for dpm++2m, else uniform)")
    p.add_argument("--variance", default=None, choices=["fixed-large", "fixed-small", "learned-range"],
                   help="sigma_t^2 for ddpm (default: the run's)")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x_0 to [-1, 1]")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default: ema)")
    p.add_argument("--chain", type=at_least(0), default=0, metavar="K",
                   help="also save the denoising chain of the first K samples (strip PNG + GIF)")
    p.add_argument("--no-individual", action="store_true", help="skip the one-PNG-per-sample folder")
    add_device_and_progress(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="network precision: auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 also on the CPU "
                        "(faster where it has native bf16) (default: auto)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay the network as a CUDA graph at every step (CUDA only; fewer kernel launches)")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    from .generate import default_samples_dir, load_run, sample
    from .samplers import steps_or_default

    if not 0.0 <= args.eta <= 1.0:
        raise _UserError(f"--eta must lie in [0, 1], got {args.eta}")
    if args.cuda_graph:
        from .distributed import resolve_device
        if (device := resolve_device(args.device)).type != "cuda":
            raise _UserError(f"--cuda-graph needs a CUDA device, but this would sample on {device}; drop the flag")
    if args.eta != 0.0 and args.sampler != "ddim":
        raise _UserError(f"--eta applies to --sampler ddim only, not {args.sampler}; drop --eta or add --sampler ddim")
    if args.variance in ("fixed-large", "fixed-small") and args.sampler != "ddpm":
        how = "takes its noise from --eta" if args.sampler == "ddim" else "adds no noise"
        raise _UserError(f"--variance {args.variance} sets Algorithm 2's sigma_t, for --sampler ddpm only; "
                         f"{args.sampler} {how}")
    if args.spacing is not None and args.sampler == "ddpm" and args.steps is None:
        raise _UserError(f"--spacing {args.spacing} picks the steps a shortened sampler keeps; ddpm without --steps "
                         "runs all T of them; add --steps or drop --spacing")
    if args.chain > args.num:
        raise _UserError(f"--chain {args.chain}: only -n {args.num} samples are drawn; pass --chain {args.num} or less")
    refuse_file_as_folder(args.out, "--out")  # before loading the run; check_out_dir below tries a write
    steps = steps_or_default(args.sampler, args.steps)
    run = load_run(args.run, which=args.weights, device=args.device)
    trained, mc = run.config.variance, run.config.model
    if args.variance and (args.variance == "learned-range") != (mc.output_channels == 2 * mc.in_channels):
        raise _UserError(f"{args.run}: a network trained with --variance {trained} cannot be sampled with "
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


class _UserError(Exception):
    """A mistake in the command line; printed as one line."""


def check_steps(steps: int | None, run, given: bool = True) -> None:
    """Refuse sampler ``steps`` outside [1, T] of the loaded ``run`` before any sampling starts.  ``given``: the
    user passed them (otherwise they are the sampler's default, and the message says so)."""
    T = run.schedule.num_timesteps
    if steps is not None and not 1 <= steps <= T:
        what = f"got {steps}" if given else f"the sampler's default is {steps}; pass --steps {T} or fewer"
        raise _UserError(f"--steps must lie in [1, {T}] (the run's T), {what}")


def _checked(build, where, flags=()):
    """Run a config constructor, turning its validation errors into one-line user errors.  Config field names in
    the message that are also command-line ``flags`` (an argparse namespace's keys) are shown as the flags."""
    try:
        return build()
    except (TypeError, ValueError) as e:
        message = str(e)
        for name in sorted(flags, key=len, reverse=True):  # longest first: ema_decay before a shorter overlap
            # two-word names are unambiguous; of the one-word flags only these appear as field names in messages
            # (a plain word such as "data" or "loss" would be renamed inside ordinary prose)
            if "_" in name or name in ("lr", "steps", "seed"):
                message = re.sub(rf"(?<![\w-]){name}(?!\w)", "--" + name.replace("_", "-"), message)
        raise _UserError(f"{where}: {message}" if where else message) from None


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: a bad flag or number says which and where to look, without the
    whole usage block (``--help`` still shows it).  Subcommand parsers inherit this class."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddpm", description="Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020).",
        epilog="examples:\n  ddpm train && ddpm sample runs/digits --chain 8\n  ddpm <command> --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_sample(sub)
    from .cli_eval import register as register_eval_and_study
    register_eval_and_study(sub)
    return parser


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .distributed import DeviceError, DistributedError

    parser = build_parser()
    args = parser.parse_args(argv)
    shown_as = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except (DataError, CheckpointError, DeviceError, _UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DistributedError as e:  # a lost rank or a timed-out collective
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:  # training diverged; the checkpoints written before are intact
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a path through a file, no permission: every write is atomic
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; files written before are intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown_as


def _interrupted_message(args) -> str:
    """What Ctrl-C leaves behind: for training, the checkpoint to resume from (or that there is none yet)."""
    if args.command != "train":
        return "interrupted"
    from .checkpoint import complete_checkpoints
    run_dir = args.resume or args.run_dir
    done = complete_checkpoints(Path(run_dir))
    if not done:
        return (f"interrupted before the first checkpoint; nothing to resume: run the same command again to start "
                f"over in {run_dir}")
    return f"interrupted; {done[0]} is intact; resume with: ddpm train --resume {run_dir}"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read like its errors: one line, no source location."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
