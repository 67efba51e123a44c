"""CPU throughput of ddpm against diffusers on the same network: training img/s and sampling-step img/s.

Ours is the library as it runs: a ``ddpm.train.Trainer`` step (data batch, q_sample, the U-Net, L_simple, backward,
gradient clipping, AdamW, EMA) and one step of the ancestral sampler's loop (the U-Net under inference mode,
p_mean_variance with clipped x0, per-sample noise).  Theirs is diffusers' ``UNet2DModel`` built to the same
architecture (parameter counts checked) driven the same way, with ``DDPMScheduler.add_noise`` for training and
``DDPMScheduler.step`` for sampling.  Same batch, shapes, threads, optimiser and bookkeeping.

Settings ("variants") are the trainer's own hardware switches: ``default`` is whatever ``TrainConfig()`` picks
on this device (the ``auto`` values); tokens joined by ``+`` override it: ``channels_last``/``nchw``,
``bf16``/``fp32`` (autocast), ``compile``/``eager``.  Every (variant, implementation) pair is timed round-robin
in one process, one step per sample, and the medians are reported.

    python benchmarks/cpu_speed.py                                   # the documented table
    python benchmarks/cpu_speed.py --threads 1 --repeats 5           # quicker, one core
    python benchmarks/cpu_speed.py --variants default,compile,compile+channels_last   # minutes of compiling
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (check_same_size, diffusers_scheduler, diffusers_unet, format_table, interleaved,  # noqa: E402
                     machine, rate)

from ddpm.config import TrainConfig  # noqa: E402
from ddpm.data import Batches, load_images  # noqa: E402
from ddpm.diffusion import p_mean_variance  # noqa: E402
from ddpm.samplers import PerSampleNoise  # noqa: E402
from ddpm.schedule import make_schedule  # noqa: E402
from ddpm.train import Trainer, ema_decay_at, lr_at  # noqa: E402
from ddpm.unet import UNet, preset  # noqa: E402

DEFAULT_VARIANTS = "default,channels_last,bf16,channels_last+bf16"
TOKENS = {"channels_last": ("channels_last", "on"), "cl": ("channels_last", "on"), "nchw": ("channels_last", "off"),
          "bf16": ("precision", "bf16"), "fp32": ("precision", "fp32"),
          "compile": ("compile", "on"), "eager": ("compile", "off")}


@dataclass
class Setting:
    """A variant resolved by the trainer's rules."""

    name: str
    channels_last: bool
    bf16: bool
    compile: bool

    @property
    def describe(self) -> str:
        return (f"{'bf16' if self.bf16 else 'fp32'}, {'channels_last' if self.channels_last else 'NCHW'}, "
                f"{'compiled' if self.compile else 'eager'}")

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def parse_variant(name: str) -> dict:
    """'channels_last+bf16' -> TrainConfig overrides; 'default' -> {} (all auto)."""
    overrides = {}
    for token in name.split("+"):
        token = token.strip().lower()
        if token in ("", "default"):
            continue
        if token not in TOKENS:
            raise SystemExit(f"unknown variant token {token!r}; use default or {sorted(TOKENS)} joined by '+'")
        key, value = TOKENS[token]
        overrides[key] = value
    return overrides


# -- ours ----------------------------------------------------------------------------------------------------
def our_trainer(args, overrides: dict, run_dir: str) -> Trainer:
    cfg = TrainConfig(run_dir=run_dir, model=preset(args.preset), batch_size=args.batch_size, device="cpu",
                      progress=False, **overrides)
    return Trainer(cfg)


def resolve(name: str, trainer: Trainer) -> Setting:
    """What the trainer actually does under this variant (its own auto rules on this device)."""
    return Setting(name, channels_last=trainer._want("channels_last"),
                   bf16=trainer._autocast_dtype() is not None, compile=trainer._want("compile"))


def eval_copy(model: torch.nn.Module, s: Setting):
    """An inference copy of ``model`` in the setting's memory format, compiled if asked."""
    m = copy.deepcopy(model).eval().requires_grad_(False).to(memory_format=s.memory_format)
    return torch.compile(m) if s.compile else m


def our_sampling_step(trainer: Trainer, s: Setting, batch: int, shape: tuple[int, ...]):
    """One iteration (k > 0) of ddpm.samplers.ancestral_sample's loop: U-Net, p_mean_variance, per-sample noise."""
    schedule = trainer.schedule
    model = eval_copy(trainer.model, s)
    variance = trainer.config.variance
    noise = PerSampleNoise(range(batch))
    state = {"x": noise.randn(shape).contiguous(memory_format=s.memory_format), "t": schedule.num_timesteps - 1}

    @torch.inference_mode()
    def step():
        x, t = state["x"], state["t"]
        tt = torch.full((batch,), t, dtype=torch.long)
        with s.autocast():
            out = model(x, tt)
        out = p_mean_variance(schedule, out.float(), x, tt, variance=variance, clip_denoised=True)
        state["x"] = out.mean + (0.5 * out.log_variance).exp() * noise.randn(shape)
        state["t"] = t - 1 if t > 1 else schedule.num_timesteps - 1  # stay on k > 0 steps
    return step


# -- diffusers -----------------------------------------------------------------------------------------------
def their_training_step(model, trainer: Trainer, s: Setting, images: torch.Tensor):
    """The trainer's step with diffusers' network and add_noise: same data order, clipping, AdamW and EMA."""
    cfg = trainer.config
    scheduler = diffusers_scheduler(cfg.schedule, cfg.variance)
    model = model.train().to(memory_format=s.memory_format)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    forward = torch.compile(model) if s.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = Batches(images, batch_size=cfg.batch_size, seed=cfg.seed, hflip=cfg.data.hflip)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    state = {"step": 0}

    def step():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], cfg.lr, cfg.warmup_steps)
        x0 = next(batches)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = scheduler.add_noise(x0, noise, t).contiguous(memory_format=s.memory_format)
        with s.autocast():
            out = forward(x_t, t).sample
        loss = F.mse_loss(out.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params],
                                 1.0 - ema_decay_at(state["step"], cfg.ema_decay))
        state["step"] += 1
    return step


def their_sampling_step(model, trainer: Trainer, s: Setting, batch: int, shape: tuple[int, ...]):
    """One DDPMScheduler.step after the network call, in the same setting."""
    scheduler = diffusers_scheduler(trainer.config.schedule, trainer.config.variance)
    model = eval_copy(model, s)
    gen = torch.Generator().manual_seed(0)
    T = trainer.config.schedule.num_timesteps
    state = {"x": torch.randn((batch, *shape), generator=gen).contiguous(memory_format=s.memory_format), "t": T - 1}

    @torch.inference_mode()
    def step():
        x, t = state["x"], state["t"]
        with s.autocast():
            out = model(x, torch.full((batch,), t, dtype=torch.long)).sample
        state["x"] = scheduler.step(out.float(), t, x, generator=gen).prev_sample
        state["t"] = t - 1 if t > 1 else T - 1
    return step


# -- report --------------------------------------------------------------------------------------------------
def table(kind: str, settings: list[Setting], results: dict, batch: int, with_diffusers: bool) -> tuple[str, list]:
    header = ["setting", f"ours {kind} img/s"] + ([f"diffusers {kind} img/s", "ours/diffusers"] if with_diffusers else [])
    rows, raw = [], []
    for s in settings:
        ours = rate(batch, results[f"ours {kind} {s.name}"])
        row = [f"{s.name} ({s.describe})", f"{ours:.1f}"]
        rec = {"variant": s.name, "setting": s.describe, "ours": ours}
        if with_diffusers:
            theirs = rate(batch, results[f"diffusers {kind} {s.name}"])
            row += [f"{theirs:.1f}", f"{ours / theirs:.2f}"]
            rec["diffusers"] = theirs
        rows.append(row)
        raw.append(rec)
    return format_table(header, rows), raw


def summary(kind: str, raw: list, target: float) -> list[str]:
    """Ours at the library defaults vs diffusers at its defaults (fp32, NCHW, eager), and best vs best."""
    lines = []
    by_name = {r["variant"]: r for r in raw}
    plain = next((r for r in raw if r["setting"] == "fp32, NCHW, eager"), None)
    if "default" in by_name and plain is not None and "diffusers" in plain:
        ratio = by_name["default"]["ours"] / plain["diffusers"]
        lines.append(f"{kind}: ours at library defaults {by_name['default']['ours']:.1f} img/s vs diffusers at "
                     f"its defaults (fp32, NCHW, eager) {plain['diffusers']:.1f} img/s = {ratio:.2f}x "
                     f"({'meets' if ratio >= target else 'misses'} the {target:g}x target)")
    if raw and "diffusers" in raw[0]:
        best_o = max(raw, key=lambda r: r["ours"])
        best_d = max(raw, key=lambda r: r["diffusers"])
        ratio = best_o["ours"] / best_d["diffusers"]
        lines.append(f"{kind}: best of each: ours {best_o['ours']:.1f} img/s ({best_o['setting']}) vs diffusers "
                     f"{best_d['diffusers']:.1f} img/s ({best_d['setting']}) = {ratio:.2f}x "
                     f"({'meets' if ratio >= target else 'misses'} the {target:g}x target)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits", help="ddpm.unet preset (default digits)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave it as the library leaves it)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated; tokens joined by '+' (default {DEFAULT_VARIANTS})")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds; each case runs once per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per case before the rounds")
    p.add_argument("--only", choices=("train", "sample"), help="time only training or only sampling")
    p.add_argument("--no-diffusers", action="store_true", help="ours only")
    p.add_argument("--target", type=float, default=1.2, help="speed-up over diffusers to check (default 1.2)")
    p.add_argument("--json", help="also write the raw samples and rates to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with_diffusers = not args.no_diffusers
    if with_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed (pip install -e '.[bench]'): timing ours only")
            with_diffusers = False

    print(machine())
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    kinds = [k for k in ("train", "sample") if args.only in (None, k)]
    cases, settings, first_call = {}, [], {}
    tmp = tempfile.TemporaryDirectory(prefix="cpu_speed_")
    images = None
    for name in names:
        trainer = our_trainer(args, parse_variant(name), str(Path(tmp.name) / name))
        s = resolve(name, trainer)
        settings.append(s)
        cfg = trainer.config.model
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if images is None:
            images = load_images(trainer.config.data)
            print(f"network: {args.preset} preset {cfg.to_dict()}")
        torch.manual_seed(0)
        theirs = diffusers_unet(cfg) if with_diffusers else None
        if theirs is not None and len(settings) == 1:
            n_ours, n_theirs = check_same_size(trainer.model, theirs)
            print(f"parameters: ours {n_ours:,}, diffusers UNet2DModel {n_theirs:,}")
        if "train" in kinds:
            cases[f"ours train {name}"] = trainer.train_step
            if theirs is not None:
                cases[f"diffusers train {name}"] = their_training_step(copy.deepcopy(theirs), trainer, s, images)
        if "sample" in kinds:
            cases[f"ours sample {name}"] = our_sampling_step(trainer, s, args.batch_size, shape)
            if theirs is not None:
                cases[f"diffusers sample {name}"] = their_sampling_step(theirs, trainer, s, args.batch_size, shape)
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.repeats} interleaved rounds, "
          f"{len(cases)} cases; medians of one-step times")
    for label, fn in cases.items():  # first call separately: it includes any compilation
        start = time.perf_counter()
        fn()
        first_call[label] = time.perf_counter() - start
    slow = {k: v for k, v in first_call.items() if "compile" in k}
    for k, v in slow.items():
        print(f"first call (compiles) {k}: {v:.0f} s")
    results = interleaved(cases, repeats=args.repeats, warmup=max(args.warmup - 1, 0),
                          on_round=lambda r: print(f"  round {r + 1}/{args.repeats} done", flush=True))

    report = {"machine": machine(), "preset": args.preset, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "samples_s": results,
              "first_call_s": first_call, "tables": {}}
    lines = []
    for kind, title in (("train", "Training (one optimiser step)"), ("sample", "Sampling (one reverse step)")):
        if kind not in kinds:
            continue
        text, raw = table(kind, settings, results, args.batch_size, with_diffusers)
        report["tables"][kind] = raw
        print(f"\n{title}, img/s, batch {args.batch_size}, {torch.get_num_threads()} threads")
        print(text)
        lines += summary(kind, raw, args.target)
    if lines:
        print()
        print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
