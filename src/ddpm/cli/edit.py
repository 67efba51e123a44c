"""``ddpm edit`` (SDEdit) and ``ddpm inpaint`` (RePaint): flags -> :func:`ddpm.sampling.edit.edit` / ``inpaint``."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.editing import alpha_bar
from ..core.samplers import REGISTRY
from ..data.datasets import to_uint8
from ..runs.images import save_grid, save_individual, save_npz
from ..runtime.atomic import write_json_atomic
from ..sampling.edit import (
    INPAINT_DEFAULTS,
    MASK_HALVES,
    ImageError,
    edit,
    fit_images,
    fit_mask,
    half_mask,
    held_out,
    inpaint,
    inpaint_calls,
    inpaint_settings,
    noised,
    read_picture,
)
from ..sampling.generate import LoadedRun, load_run
from .args import add_device_and_progress, add_eta, add_weights, at_least, sampling_from_args
from .errors import UserError, check_out_dir, refuse_file_as_folder

__all__ = ["register", "EDIT_EXAMPLES", "INPAINT_EXAMPLES"]

EDIT_EXAMPLES = """examples:
  ddpm edit runs/digits --image test:0-7 --t 300      # 8 held-out digits, noised to t = 300 and denoised
  ddpm edit runs/digits --image my_digit.png --t 500 -n 4 --seed 1   # 4 edits of one picture
  ddpm edit runs/digits --image test:3 --t 400 --sampler ddim --steps 20
"""

INPAINT_EXAMPLES = """examples:
  ddpm inpaint runs/digits --image test:0-15 --mask bottom   # keep the top halves, paint the bottom halves
  ddpm inpaint runs/digits --image my_digit.png --mask my_mask.png -n 4   # white in the mask is painted
  ddpm inpaint runs/digits --image test:5 --mask right --resample 1       # plain replacement, no resampling
  ddpm inpaint runs/digits --image test:0-15 --mask bottom --steps 250 --jump-length 10 --resample 10  # the paper's
"""

#: --image test:K or test:K-L: held-out images of the run's embedded dataset
_HELD_OUT = re.compile(r"^test:(\d+)(?:-(\d+))?$")


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("run", help="run folder (or one checkpoint folder inside it)")
    p.add_argument("--image", required=True, metavar="X",
                   help="the picture(s): a PNG/JPEG, a .npy/.npz of uint8 images, or test:K / test:K-L for held-out "
                        "images of the run's embedded dataset; the run's size or a whole multiple of it")
    p.add_argument("-n", "--num", type=at_least(1), default=1, help="results per picture, each from its own seed "
                                                                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="base seed; result k has its own seed (default: 0)")
    p.add_argument("--out", default=None, help=f"output folder (default: RUN/{what})")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="images per batch (default: %(default)s)")
    add_weights(p)
    add_device_and_progress(p)


def register(sub) -> None:
    p = sub.add_parser("edit", help="SDEdit: noise a picture to time t and denoise it (Meng et al. 2022)",
                       description="Noise each picture to the paper's time t with eq. 4 and run the reverse process "
                                   "back to x_0 (SDEdit, Meng et al. 2022): small t keeps the picture, large t redraws "
                                   "it.  Writes grid.png, samples.npz, images/, compare.png (picture | x_t | result "
                                   "per row) and edit.json.",
                       epilog=EDIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, "edit")
    p.add_argument("--t", type=at_least(0), required=True, help="the time to noise to, 0..T (0 changes nothing)")
    p.add_argument("--sampler", default="ddpm", choices=tuple(REGISTRY),
                   help="reverse process from t: " + ", ".join(f"{k} = {v.about}" for k, v in REGISTRY.items())
                        + " (default: %(default)s)")
    p.add_argument("--steps", type=at_least(1), default=None, help="network calls from t (default: t, one per step)")
    add_eta(p)
    p.set_defaults(func=_run_edit)

    p = sub.add_parser("inpaint", help="RePaint: fill a masked part of a picture from the model (Lugmayr et al. 2022)",
                       description="Fill the pixels a mask marks from the model, keeping the others (RePaint, Lugmayr "
                                   "et al. 2022): the known pixels are re-noised to every step's level, and every "
                                   "--jump-length steps the image is noised back up and denoised again, --resample "
                                   "times in all.  Writes grid.png, samples.npz, images/, compare.png (picture | "
                                   "masked | result per row) and inpaint.json.",
                       epilog=INPAINT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, "inpaint")
    p.add_argument("--mask", required=True, metavar="M",
                   help=f"what to paint: {', '.join(MASK_HALVES)} (that half), or a mask picture of the same size "
                        "whose white pixels are painted")
    d = INPAINT_DEFAULTS
    p.add_argument("--steps", type=at_least(1), default=None,
                   help=f"levels of the respaced schedule (default: {d['steps']}, or T if fewer)")
    p.add_argument("--jump-length", type=at_least(1), default=None,
                   help=f"RePaint's j: steps of each jump back up (default: {d['jump_length']})")
    p.add_argument("--resample", type=at_least(1), default=None,
                   help=f"RePaint's r: passes over each window; 1 = plain replacement (default: {d['resample']})")
    p.set_defaults(func=_run_inpaint)


def _picture(spec: str) -> tuple[str, object]:
    """What --image names, read before the run is loaded: ("held-out", (first, last)) or ("file", uint8 array)."""
    m = _HELD_OUT.match(spec)
    if m:
        first = int(m.group(1))
        return "held-out", (first, int(m.group(2)) if m.group(2) else first)
    try:
        return "file", read_picture(spec)
    except ImageError as e:
        raise UserError(f"--image {e}") from None


def _fitted(run: LoadedRun, kind: str, picture, spec: str) -> torch.Tensor:
    try:
        if kind == "held-out":
            return held_out(run, *picture)
        mc = run.config.model
        return fit_images(picture, mc.in_channels, mc.image_size, what=spec)
    except ImageError as e:
        raise UserError(f"--image {e}") from None


def _load(args) -> tuple[LoadedRun, torch.Tensor, Path]:
    refuse_file_as_folder(args.out, "--out")
    kind, picture = _picture(args.image)
    run = load_run(args.run, which=args.weights, device=args.device)
    images = _fitted(run, kind, picture, args.image)
    return run, images, Path(args.out) if args.out else Path(run.checkpoint).parent.parent / args.command


class _Bar:
    """An ``on_step`` observer counting network calls on a progress bar."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = tqdm(total=total, desc=desc, unit="call", dynamic_ncols=True) if enabled else None

    def __call__(self, step) -> None:
        if self.bar is not None and step.x0 is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write(out: Path, images: torch.Tensor, rows: list[torch.Tensor], record: dict) -> None:
    save_grid(out / "grid.png", images)
    save_npz(out / "samples.npz", images)
    for stale in (out / "images").glob("sample_*.png"):
        stale.unlink()
    save_individual(out / "images", images)
    save_grid(out / "compare.png", torch.stack(rows, dim=1).flatten(0, 1), nrow=len(rows))
    write_json_atomic(out / f"{record['command']}.json", record)


def _run_edit(args) -> int:
    sampling = sampling_from_args(args)  # eta's range, and a sampler that takes it, are the config's checks
    run, images, out = _load(args)
    T = run.schedule.num_timesteps
    if args.t > T:
        raise UserError(f"--t must lie in [0, {T}] (the run's T), got {args.t}")
    out = check_out_dir(out)
    images = images.repeat_interleave(args.num, dim=0)
    steps = min(args.steps or args.t, args.t)
    bar = _Bar(steps * -(-len(images) // args.batch_size), not args.no_progress and args.t > 0, "edit")
    try:
        result = edit(run, images, args.t, sampling, seed=args.seed, batch_size=args.batch_size, on_step=bar).images
    finally:
        bar.close()
    x_t = to_uint8(noised(run, images, args.t, seed=args.seed).x.clamp(-1, 1))
    record = {"command": "edit", "checkpoint": str(Path(run.checkpoint).resolve()), "weights": run.weights,
              "image": args.image, "n": len(images), "seed": args.seed, "t": args.t, "abar_t": alpha_bar(run.schedule,
              args.t), "sampler": args.sampler, "steps": steps, "eta": args.eta}
    _write(out, result, [images, x_t, result], record)
    print(f"edits of {args.image} from t = {args.t} written to {out} (grid.png, samples.npz, images/, compare.png)")
    return 0


def _mask(args, run: LoadedRun) -> torch.Tensor:
    size = run.config.model.image_size
    try:
        if args.mask in MASK_HALVES:
            return half_mask(args.mask, size)
        return fit_mask(read_picture(args.mask), size, what=args.mask)
    except ImageError as e:
        raise UserError(f"--mask {e}") from None


def _run_inpaint(args) -> int:
    if args.mask not in MASK_HALVES and not Path(args.mask).is_file():
        raise UserError(f"--mask {args.mask}: neither {', '.join(MASK_HALVES)} nor a file; pass one of those or a "
                        "mask picture")
    run, images, out = _load(args)
    T = run.schedule.num_timesteps
    if args.steps is not None and args.steps > T:
        raise UserError(f"--steps must lie in [1, {T}] (the run's T), got {args.steps}")
    settings = inpaint_settings(T, args.steps, args.jump_length, args.resample)
    steps, jump, resample = settings["steps"], settings["jump_length"], settings["resample"]
    if resample > 1 and jump >= steps:
        raise UserError(f"--jump-length {jump} leaves no room for a jump in --steps {steps}; pass a jump length "
                        f"below {steps}, or --resample 1")
    mask = _mask(args, run)
    if len(mask) not in (1, len(images)):
        raise UserError(f"--mask holds {len(mask)} masks for {len(images)} pictures; pass one, or one per picture")
    if not mask.any():
        raise UserError(f"--mask {args.mask}: the mask is empty; mark the pixels to paint in white")
    out = check_out_dir(out)
    images = images.repeat_interleave(args.num, dim=0)
    mask = mask.expand(len(images) // args.num, *mask.shape[1:]).repeat_interleave(args.num, dim=0)
    batches = -(-len(images) // args.batch_size)
    calls = inpaint_calls(T, **settings)
    bar = _Bar(calls * batches, not args.no_progress, "inpaint")
    try:
        result = inpaint(run, images, mask, seed=args.seed, batch_size=args.batch_size, on_step=bar, **settings).images
    finally:
        bar.close()
    shown = torch.where(mask, torch.full_like(images, 128), images)  # the painted region in mid grey
    record = {"command": "inpaint", "checkpoint": str(Path(run.checkpoint).resolve()), "weights": run.weights,
              "image": args.image, "mask": args.mask, "n": len(images), "seed": args.seed, **settings,
              "network_calls_per_batch": calls}
    _write(out, result, [images, shown, result], record)
    print(f"inpainted {args.image} ({args.mask}) written to {out} (grid.png, samples.npz, images/, compare.png)")
    return 0
