"""``ddpm train``: flags -> :class:`~ddpm.runs.config.TrainConfig` -> :func:`ddpm.training.trainer.train`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from ..core.diffusion import VARIANCE_TYPES
from ..core.schedule import SCHEDULE_KINDS, ScheduleConfig
from ..data.datasets import EMBEDDED, DataConfig
from ..data.embedded import SPLITS
from ..data.files import native_shape
from ..evaluation.fid import FidUnavailable
from ..evaluation.tracking import make_evaluator
from ..model.unet import PRESETS, UNetConfig, preset
from ..runs.checkpoint import CheckpointError, latest_checkpoint
from ..runs.config import LOSS_TYPES, LR_SCHEDULES, PRESET_RECIPES, TrainConfig
from ..runtime.precision import PRECISIONS
from ..training.finetune import source_config
from ..training.loggers import LOGGERS, check_loggers
from ..training.rates import lr_at
from ..training.trainer import train
from .args import add_device_and_progress, at_least, float_list, int_list, positive_float
from .errors import UserError, checked, refuse_file_as_folder

__all__ = ["register", "config_from_args", "TRAIN_EXAMPLES", "RESUME_FLAGS"]

TRAIN_EXAMPLES = """examples:
  ddpm train                                   # small preset on the embedded MNIST digits (train split)
  ddpm train --preset digits-fast --class-cond --run-dir runs/demo   # make demo: 5 minutes, digits by class
  ddpm train --steps 20000 --run-dir runs/long
  ddpm train --class-cond --run-dir runs/digits-cond   # class-conditional: the digits' labels, 10% dropped
  ddpm train --data path/to/classes --class-cond --image-size 64 --channels 3   # one sub-folder per class
  ddpm train --data path/to/images --image-size 64 --channels 3 --preset cifar10 --hflip
  ddpm train --data faces.npz --loss hybrid --variance learned-range
  ddpm train --preset tiny --attention-resolutions 16 --base-channels 8  # the tiny net, reshaped for 32x32
  ddpm train --resume runs/digits --steps 8000  # go on from the last checkpoint (cosine decay now ends at 8000)
  ddpm train --init-from runs/cifar10-paper --data my_images/ --steps 2000 --run-dir runs/finetuned   # fine-tune
  torchrun --standalone --nproc_per_node=8 -m ddpm train --batch-size 16   # 8 GPUs, global batch 128
"""


def _on_off(value: str) -> str:
    v = value.lower()
    if v not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError("expected auto, on or off")
    return v


_DEFAULTS = TrainConfig()


def _recipe_default(name: str, none: str = "None") -> str:
    """``--help``'s default of a training setting, from the library: the recipe value of each preset that sets it,
    else TrainConfig's own (the paper's; ``none`` names a None)."""
    base = getattr(_DEFAULTS, name)
    base = none if base is None else base
    special = [f"{recipe[name]:g} for the {p} preset" if isinstance(recipe[name], float) else
               f"{recipe[name]} for the {p} preset" for p, recipe in sorted(PRESET_RECIPES.items()) if name in recipe]
    base = f"{base:g}" if isinstance(base, float) else str(base)
    return f"{', '.join(special)}, else {base}" if special else base


def register(sub) -> None:
    """Add ``ddpm train`` to the subcommands ``sub``."""
    d, sched = _DEFAULTS, ScheduleConfig()
    p = sub.add_parser("train", help="train a noise predictor with Algorithm 1",
                       description="Train eps_theta(x_t, t) with the DDPM objective (Ho et al. 2020, Algorithm 1).",
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint "
                   "(its saved config is used; only --steps, --device and --no-progress apply)")
    p.add_argument("--run-dir", default=d.run_dir, help="where config, metrics, previews and checkpoints go "
                   "(default: %(default)s)")
    p.add_argument("--init-from", metavar="RUN_OR_CHECKPOINT", default=None,
                   help="start a new run from the EMA weights of this run or checkpoint (one ddpm import wrote, too): "
                        "its network, schedule and variance unless flags say otherwise, and the paper's recipe "
                        "(lr 2e-4, constant) instead of a preset's; fine-tuning on --data")
    _add_network_flags(p)
    _add_data_flags(p, d)
    _add_optimiser_flags(p, d)
    _add_objective_flags(p, d, sched)
    _add_logging_flags(p, d)
    _add_watch_flags(p, d)
    add_device_and_progress(p, device_default=None)  # None: a resume keeps the run's device unless told
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast dtype; auto = bf16 on CUDA, fp32 on CPU; fp16 with a gradient scaler "
                        f"(default: {d.precision})")
    p.add_argument("--compile", type=_on_off, default=None,
                   help="torch.compile: auto (on for CUDA where Triton is installed; eager if the first step "
                        "fails to compile), on, off")
    p.set_defaults(func=_run_train)




def _add_network_flags(p) -> None:
    """The U-Net: a preset and its overrides."""
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="U-Net and its recipe: digits (1.1M parameters, 32x32 grey), digits-fast (0.69M, the digits "
                        "at their own 28x28, under a third of the minutes), cifar10 (the paper's 35.7M, 32x32 "
                        "colour), tiny (for tests on 8x8 images: add --image-size 8) (default: digits)")
    p.add_argument("--base-channels", type=at_least(1), default=None,
                   help="override the preset's width at full resolution")
    p.add_argument("--channel-mult", type=int_list, default=None, metavar="M1,M2,...",
                   help="override the preset's width multiplier per level, e.g. 1,2,2,2 (one level per entry)")
    p.add_argument("--num-res-blocks", type=at_least(1), default=None,
                   help="override the preset's residual blocks per level")
    p.add_argument("--attention-resolutions", type=int_list, default=None, metavar="R1,R2,...",
                   help="override the feature-map sizes (pixels) that get self-attention, e.g. 16 or 16,8")


def _add_data_flags(p, d: TrainConfig) -> None:
    """What to train on: the source, its cache, split, size, channels, flips and class labels."""
    p.add_argument("--data", default=d.data.source, help="'digits' (embedded MNIST, 4,500 train / 500 test), "
                   "'sklearn-digits', a folder of images (flat, or one sub-folder per class), a .npy/.npz file, a "
                   "Parquet file or folder of them with an 'image' column, or a Hugging Face dataset saved with "
                   "save_to_disk (default: %(default)s)")
    p.add_argument("--data-cache", metavar="DIR", default=None,
                   help="where a folder's or a table's images are decoded once, in parallel, and memory-mapped "
                        "from at every later start and resume (default: $XDG_CACHE_HOME/ddpm, else ~/.cache/ddpm)")
    p.add_argument("--split", default=d.data.split, choices=SPLITS,
                   help="split of the embedded datasets to train on (default: %(default)s)")
    p.add_argument("--image-size", type=at_least(1), default=None,
                   help=f"side of the square images (default: {d.data.image_size})")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="1 (grey) or 3 (RGB) (default: what --data holds; 1 for the embedded digits)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips (off for digits)")
    p.add_argument("--class-cond", action="store_true",
                   help="train a class-conditional network eps_theta(x_t, t, y) on the data's class labels (the "
                        "embedded digits' own; a folder's sub-folder names, one per class; an .npz's 'y' or "
                        "'labels' array), for classifier-free guidance at sampling (ddpm sample --class)")
    p.add_argument("--label-dropout", type=float, default=None, metavar="P",
                   help=f"with --class-cond: probability of training an image as 'no class', which teaches the "
                        f"unconditional model guidance needs (default: {d.label_dropout:g})")


def _add_optimiser_flags(p, d: TrainConfig) -> None:
    """Algorithm 1's optimisation: steps, batch, AdamW's learning rate and its schedule, the EMAs."""
    p.add_argument("--steps", type=at_least(1), default=None,
                   help=f"optimisation steps in total (default: {_recipe_default('steps')})")
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help=f"images per step per device (default: {_recipe_default('batch_size')})")
    p.add_argument("--grad-accum", type=at_least(1), default=None,
                   help=f"micro-batches per step (default: {d.grad_accum})")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"AdamW peak learning rate (default: {_recipe_default('lr')})")
    p.add_argument("--warmup-steps", type=at_least(0), default=None,
                   help=f"steps of linear learning-rate warm-up (default: {_recipe_default('warmup_steps')})")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help=f"after warm-up: constant, or cosine decay to 0 at --steps "
                        f"(default: {_recipe_default('lr_schedule')})")
    p.add_argument("--ema-decay", type=float_list, default=None, metavar="D[,D2,...]",
                   help=f"EMA decay (default: {d.ema_decay:g}, with warm-up); several, comma-separated, track one EMA "
                        f"each, sampled with --weights ema:D (the first is the run's default EMA)")
    p.add_argument("--ema-snapshot-every", type=at_least(0), default=None, metavar="N",
                   help="post-hoc EMA (Karras et al. 2024): track two power-function EMAs (sigma_rel 0.05 and 0.10) "
                        "and save a snapshot of both every N steps, for `ddpm ema RUN --sigma-rel S` (default: 0, off)")


def _add_objective_flags(p, d: TrainConfig, sched: ScheduleConfig) -> None:
    """What the network learns: dropout, the loss and its weighting, the variance, the noise schedule."""
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--loss", choices=LOSS_TYPES, default=None,
                   help=f"L_simple (eq. 14), L_vlb, or L_simple + lambda L_vlb (default: {d.loss})")
    p.add_argument("--hybrid-lambda", type=float, default=None,
                   help=f"lambda of the hybrid loss (default: {d.hybrid_lambda:g})")
    p.add_argument("--min-snr-gamma", type=float, default=None, metavar="GAMMA",
                   help="weigh L_simple by min(SNR_t, GAMMA) / SNR_t (Min-SNR, Hang et al. 2023; 5 in the paper); 0: "
                        f"unweighted, eq. 14 (default: {_recipe_default('min_snr_gamma', 'unweighted')})")
    p.add_argument("--variance", choices=VARIANCE_TYPES, default=None,
                   help=f"sigma_t^2: beta_t, beta~_t or learned (default: {d.variance})")
    p.add_argument("--importance-sampling", action="store_true", help="sample t by the history of L_vlb terms")
    p.add_argument("--schedule", choices=SCHEDULE_KINDS, default=None, help=f"beta schedule (default: {sched.kind})")
    p.add_argument("--timesteps", type=at_least(1), default=None, help=f"T (default: {sched.num_timesteps})")
    p.add_argument("--beta-start", type=float, default=None,
                   help=f"beta_1 of the linear schedule (default: {sched.beta_start:g})")
    p.add_argument("--beta-end", type=float, default=None,
                   help=f"beta_T of the linear schedule (default: {sched.beta_end:g})")


def _add_logging_flags(p, d: TrainConfig) -> None:
    """Seeds and the cadence of metric rows, previews and checkpoints."""
    p.add_argument("--seed", type=int, default=None, help=f"seed of init, data order and noise (default: {d.seed})")
    p.add_argument("--log-every", type=at_least(1), default=None,
                   help=f"steps between metric rows (default: {d.log_every})")
    p.add_argument("--sample-every", type=at_least(1), default=None,
                   help=f"steps between preview grids (default: {d.sample_every})")
    p.add_argument("--checkpoint-every", type=at_least(1), default=None,
                   help=f"steps between checkpoints (default: {d.checkpoint_every})")
    p.add_argument("--keep-checkpoints", type=at_least(1), default=None,
                   help=f"checkpoints kept (default: {d.keep_checkpoints}; checkpoints/best is kept besides)")


def _add_watch_flags(p, d: TrainConfig) -> None:
    """--logger, --eval-every and --eval-samples (docs/tracking.md)."""
    p.add_argument("--logger", default=None, metavar="NAME[,NAME]",
                   help=f"log to {' and/or '.join(LOGGERS)} as well (comma-separated; into RUN/tensorboard/, "
                        "RUN/wandb/; metrics.jsonl is always written)")
    p.add_argument("--eval-every", type=at_least(1), default=None, metavar="N",
                   help="every N steps (and at the last), draw --eval-samples samples with the default sampling and "
                        "measure the run's quality (digits: classifier FD and KID; other data: Inception FD, "
                        "ddpm[fid]); the best so far is kept as checkpoints/best (default: never)")
    p.add_argument("--eval-samples", type=at_least(2), default=None, metavar="n",
                   help=f"samples per evaluation, fixed seeds (default: {d.eval_samples}; FD at small n is not "
                        "comparable with published 50,000-sample figures)")


def config_from_args(args) -> TrainConfig:
    """The :class:`TrainConfig` of a ``ddpm train`` command line: :meth:`TrainConfig.for_preset` of ``--preset``
    with the flags that were given laid over it; with ``--init-from``, the source run's network, schedule, variance
    and loss with the flags laid over them, and TrainConfig's own recipe (the paper's)."""
    defaults = _DEFAULTS
    model_over = {k: v for k, v in {"dropout": args.dropout, "base_channels": args.base_channels,
                                    "channel_mult": args.channel_mult, "num_res_blocks": args.num_res_blocks,
                                    "attention_resolutions": args.attention_resolutions}.items() if v is not None}
    source_run = source_ckpt = None
    if args.init_from:
        shaping = [flag for flag, given in (("--preset", args.preset), ("--base-channels", args.base_channels),
                                            ("--channel-mult", args.channel_mult),
                                            ("--num-res-blocks", args.num_res_blocks),
                                            ("--attention-resolutions", args.attention_resolutions))
                   if given is not None]
        if shaping:
            raise ValueError(f"{shaping[0]}: --init-from takes the network of {args.init_from} as it is; drop "
                             f"{shaping[0]}")
        source_ckpt, source_run = source_config(args.init_from)
    # a path is saved absolute, so that the run can be resumed or evaluated from any folder
    source = args.data if args.data in EMBEDDED or not Path(args.data).exists() else str(Path(args.data).resolve())
    channels = args.channels
    if channels is None and source_run is not None:  # the network's channels; load_images converts the data
        channels = source_run.model.in_channels
    if channels is None:  # colour data trains in colour unless told otherwise
        on_disk = source not in EMBEDDED and Path(source).exists()
        channels = native_shape(source)[0] if on_disk else defaults.data.channels
    class_cond = args.class_cond
    if source_run is not None:  # the network of --init-from has a class embedding or has none
        if class_cond and not source_run.model.num_classes:
            raise ValueError(f"--class-cond: the network of {args.init_from} is unconditional (no class embedding); "
                             "drop --class-cond")
        class_cond = bool(source_run.model.num_classes)
    if args.label_dropout is not None and not class_cond:
        raise ValueError(f"--label-dropout {args.label_dropout:g} applies to class-conditional training; add "
                         "--class-cond or drop --label-dropout")
    if args.eval_samples is not None and args.eval_every is None:
        raise ValueError(f"--eval-samples {args.eval_samples} sets the samples of --eval-every; add --eval-every N or "
                         "drop --eval-samples")
    preset_name = args.preset or "digits"
    # a preset with a recipe trains at its network's size, the others at TrainConfig's (32)
    own = preset(preset_name).image_size if preset_name in PRESET_RECIPES else defaults.data.image_size
    image_size = args.image_size or (source_run.model.image_size if source_run else own)
    data = DataConfig(source=source, image_size=image_size, channels=channels, split=args.split, hflip=args.hflip,
                      class_cond=class_cond)
    model = preset(preset_name) if source_run is None else source_run.model
    if model_over:  # checked at the data's image size, where the network will run
        model = UNetConfig.from_dict({**model.to_dict(), **model_over, "image_size": data.image_size,
                                      "in_channels": data.channels})
    if args.schedule == "cosine" and (args.beta_start is not None or args.beta_end is not None):
        raise ValueError("--beta-start and --beta-end set the linear schedule; the cosine one has no such ends")
    sched = {k: v for k, v in {"kind": args.schedule, "num_timesteps": args.timesteps, "beta_start": args.beta_start,
                               "beta_end": args.beta_end}.items() if v is not None}
    schedule = replace(defaults.schedule if source_run is None else source_run.schedule, **sched)
    flat = {"run_dir": args.run_dir, "steps": args.steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "lr": args.lr, "warmup_steps": args.warmup_steps,
            "lr_schedule": args.lr_schedule, "loss": args.loss,
            "ema_decay": None if args.ema_decay is None else args.ema_decay[0],
            "extra_ema_decays": None if args.ema_decay is None else args.ema_decay[1:],
            "ema_snapshot_every": args.ema_snapshot_every,
            "hybrid_lambda": args.hybrid_lambda, "min_snr_gamma": args.min_snr_gamma, "variance": args.variance,
            "seed": args.seed, "log_every": args.log_every, "sample_every": args.sample_every,
            "checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints,
            "device": args.device, "precision": args.precision, "compile": args.compile,
            "label_dropout": args.label_dropout, "data_cache": args.data_cache and str(Path(args.data_cache).resolve()),
            "eval_every": args.eval_every, "eval_samples": args.eval_samples,
            "loggers": None if args.logger is None else check_loggers(args.logger)}
    flat = {k: v for k, v in flat.items() if v is not None}
    if flat.get("min_snr_gamma") == 0:  # unweighted, whatever the preset's recipe says
        flat["min_snr_gamma"] = None
    if source_run is None:
        return TrainConfig.for_preset(preset_name, model=model, schedule=schedule, data=data,
                                      importance_sampling=args.importance_sampling,
                                      progress=not args.no_progress, **flat)
    _check_fits(args, source_run.model, data, flat.get("variance", source_run.variance))
    flat = {"variance": source_run.variance, "loss": source_run.loss, **flat}
    return TrainConfig(model=model, schedule=schedule, data=data, importance_sampling=args.importance_sampling,
                       progress=not args.no_progress, init_from=str(source_ckpt.resolve()), **flat)


def _check_fits(args, model: UNetConfig, data: DataConfig, variance: str) -> None:
    """Refuse image sizes, channels and variances the network of ``--init-from`` was not made for (its weights
    would not fit), before any work."""
    if data.image_size != model.image_size:
        raise ValueError(f"--image-size {data.image_size}: the network of {args.init_from} works on "
                         f"{model.image_size}x{model.image_size} images (its attention sits at "
                         f"{list(model.attention_resolutions)} px); drop --image-size")
    if data.channels != model.in_channels:
        raise ValueError(f"--channels {data.channels}: the network of {args.init_from} takes "
                         f"{model.in_channels}-channel images; pass --channels {model.in_channels} (the data is "
                         "converted)")
    if (model.output_channels == 2 * model.in_channels) != (variance == "learned-range"):
        raise ValueError(f"--variance {variance}: the network of {args.init_from} "
                         f"{'predicts' if model.output_channels == 2 * model.in_channels else 'has no'} "
                         "learned-range variance outputs; drop --variance")


def _run_train(args) -> int:
    if args.resume:
        cfg_path = Path(args.resume) / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{args.resume}: not a run folder (no config.json); nothing to resume")
        try:
            saved = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_path}: unreadable JSON ({e})") from None
        if isinstance(saved, dict) and saved.get("imported"):
            raise UserError(f"{args.resume}: imported by ddpm import, so it holds weights but no training state to "
                            f"resume; start a new run from them: ddpm train --init-from {args.resume} --data ...")
        _check_resume_flags(args, saved)
        saved["run_dir"] = str(args.resume)
        if args.data_cache is not None:  # a machine's own folder: a resume elsewhere may name another
            saved["data_cache"] = args.data_cache
        for key, value in (("steps", args.steps), ("device", args.device)):
            if value is not None:
                saved[key] = value
        saved["progress"] = not args.no_progress
        config = checked(lambda: TrainConfig.from_dict(saved), cfg_path)
        checked(lambda: check_loggers(config.loggers), cfg_path)
        out = train(config, resume=True, evaluator=_evaluator(config))
    else:
        refuse_file_as_folder(args.run_dir, "--run-dir")
        config = checked(lambda: config_from_args(args), None, flags=vars(args))
        if args.warmup_steps is not None and config.warmup_steps >= config.steps:
            warnings.warn(f"--warmup-steps {config.warmup_steps} is not below --steps {config.steps}: the learning "
                          f"rate never reaches --lr {config.lr:g}")
        out = train(config, evaluator=_evaluator(config))  # refuses a folder that already holds checkpoints
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 speaks
        print(f"run saved in {out}")
    return 0


def _evaluator(config: TrainConfig):
    """The quality evaluator of ``--eval-every`` (None without it), built before any training: a missing
    torch-fidelity or Inception weights file is refused here, in one line."""
    if not config.eval_every:
        return None
    try:
        return make_evaluator(config, config.run_dir, n=config.eval_samples)
    except FidUnavailable as e:
        raise UserError(f"--eval-every: {e}") from None


#: the flags that ``ddpm train --resume`` takes; the run's other settings come from its config.json
RESUME_FLAGS = ("resume", "steps", "device", "no_progress", "data_cache")


def _check_resume_flags(args, saved: dict) -> None:
    """Refuse flags a resume would ignore and a --steps the run has already reached; say when there is nothing
    left to train, and when --steps stretches a cosine learning-rate schedule (it is a function of the total
    steps, so the rate at the current step moves)."""
    defaults = vars(_alone().parse_args([]))
    ignored = [k for k, v in vars(args).items() if k not in (*RESUME_FLAGS, "func", "command") and v != defaults.get(k)]
    if ignored:
        flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
        raise UserError(f"{flags}: --resume continues {args.resume} with the settings in its config.json and takes "
                         "only --steps, --device and --no-progress; drop the others or start a new run")
    try:
        done = int(latest_checkpoint(args.resume).name[5:])
    except (CheckpointError, ValueError):
        return  # the trainer says what is wrong with the folder
    if args.steps is not None and args.steps <= done:
        raise UserError(f"--steps {args.steps}: {args.resume} is already at step {done}; pass a larger total")
    if args.steps is None:
        total = saved.get("steps")
        if isinstance(total, int) and done >= total and os.environ.get("RANK", "0") == "0":
            print(f"note: {args.resume} is already at step {done} of {total}; nothing to train (pass --steps N "
                  f"above {done} to go further)", file=sys.stderr)
        return
    if saved.get("lr_schedule") == "cosine" and args.steps != saved.get("steps"):
        lr, warm = saved.get("lr", 0.0), saved.get("warmup_steps", 0)
        before = lr_at(done, lr, warm, "cosine", saved.get("steps"))
        after = lr_at(done, lr, warm, "cosine", args.steps)
        print(f"note: the cosine learning-rate schedule now ends at step {args.steps} instead of {saved.get('steps')}; "
              f"the rate at step {done} goes from {before:.3g} to {after:.3g}", file=sys.stderr)




def _alone() -> argparse.ArgumentParser:
    """A parser of ``ddpm train``'s flags alone, whose defaults say which flags a command line changed."""
    holder = argparse.ArgumentParser(add_help=False).add_subparsers()
    register(holder)
    return holder.choices["train"]
