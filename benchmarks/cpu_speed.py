"""CPU throughput of ddpm against diffusers on the same network: training img/s and sampling-step img/s.

Ours is the library as it runs: a ``ddpm.training.trainer.Trainer`` step (data batch, q_sample, the U-Net, L_simple,
backward, gradient clipping, AdamW, EMA) and ``ddpm.core.samplers.ancestral_sample`` (the U-Net under inference mode,
p_mean_variance with clipped x0, per-sample noise) timed over a few respaced steps and reported per step.  Theirs is
diffusers' ``UNet2DModel`` built from the config ``ddpm export`` writes (parameter counts checked), trained by the
same ``Trainer.train_step`` with the network swapped, and sampled by ``DDPMScheduler.step``.  Same batch, shapes,
threads, optimiser and bookkeeping.  Every preset runs at its own image size and recipe
(``TrainConfig.for_preset``).

Settings ("variants") are the trainer's own hardware switches: ``default`` is whatever ``TrainConfig()`` picks
on this device (the ``auto`` values); tokens joined by ``+`` override it: ``channels_last``/``nchw``,
``bf16``/``fp32`` (autocast), ``compile``/``eager``.  The sampling step of a variant uses the same precision,
layout and compilation.  Every (variant, implementation) pair is timed round-robin in one process, one step per
sample, and the medians are reported with the ratio ours/diffusers per variant, ours at the library defaults
against diffusers at its own (fp32, NCHW, eager), and the best of each.

    python benchmarks/cpu_speed.py                                   # the documented table (library threads)
    python benchmarks/cpu_speed.py --threads 1 --clock cpu           # one core, CPU seconds: steady on a busy box
    python benchmarks/cpu_speed.py --variants default --profile      # where the time goes, per op group
    python benchmarks/cpu_speed.py --variants default,compile,bf16+nchw+compile   # minutes of compiling
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    SAMPLING_STEPS_PER_CALL,
    DiffusersNet,
    Setting,
    check_same_size,
    diffusers_available,
    format_table,
    interleaved,
    machine,
    our_sampling_step,
    parse_variant,
    rate,
    resolve_setting,
    their_sampling_step,
    with_network,
)

from ddpm.model.unet import PRESETS
from ddpm.runs.config import TrainConfig
from ddpm.training.trainer import Trainer

DEFAULT_VARIANTS = "default,fp32+nchw,fp32+channels_last,bf16+nchw,bf16+channels_last"


def our_trainer(args, overrides: dict, run_dir: str) -> Trainer:
    """A trainer of ``args.preset`` as ``ddpm train --preset`` makes it (its image size and recipe), on the CPU."""
    cfg = TrainConfig.for_preset(args.preset, run_dir=run_dir, batch_size=args.batch_size, device="cpu",
                                 progress=False, **overrides)
    return Trainer(cfg)


# -- profile -------------------------------------------------------------------------------------------------
#: aten ops -> the groups of the profile table (checked in order; anything else is "other")
OP_GROUPS = (("conv forward", ("mkldnn_convolution", "_convolution", "convolution", "conv2d", "slow_conv2d_forward")),
             ("conv backward", ("convolution_backward", "mkldnn_convolution_backward", "slow_conv2d_backward")),
             ("group norm", ("native_group_norm", "native_group_norm_backward", "group_norm")),
             ("SiLU", ("silu", "silu_backward")),
             ("attention", ("bmm", "baddbmm", "_softmax", "_softmax_backward_data", "_safe_softmax",
                            "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                            "_scaled_dot_product_flash_attention_for_cpu_backward")),
             ("linear", ("addmm", "mm", "linear")),
             ("optimiser, clipping, EMA", ("_foreach_",)),
             ("add / mul", ("add", "add_", "mul", "mul_", "sub", "div", "addcmul", "lerp_", "neg")),
             ("copy / cast / cat", ("copy_", "_to_copy", "cat", "clone", "upsample_nearest2d",
                                    "upsample_nearest2d_backward")))


def op_group(name: str) -> str:
    op = name.split("::")[-1]
    for group, keys in OP_GROUPS:
        if op in keys or any(k.endswith("_") and op.startswith(k) for k in keys if k.startswith("_foreach")):
            return group
    return "other"


def profile(cases: dict, steps: int) -> str:
    """Share of each op group in the self CPU time of ``steps`` calls of every case (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    shares, totals = {}, {}
    for label, fn in cases.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
        by_group = {}
        for event in prof.key_averages():
            if event.key.startswith("aten::") or event.key.startswith("mkldnn::"):
                g = op_group(event.key)
                by_group[g] = by_group.get(g, 0.0) + event.self_cpu_time_total
        total = sum(by_group.values())
        shares[label] = {g: v / total for g, v in by_group.items()}
        totals[label] = total / steps / 1e3
    groups = [g for g, _ in OP_GROUPS] + ["other"]
    header = ["op group"] + list(cases)
    rows = [[g] + [f"{shares[c].get(g, 0.0):.1%}" for c in cases] for g in groups]
    rows.append(["aten self time, ms/step"] + [f"{totals[c]:.0f}" for c in cases])
    return format_table(header, rows)


# -- report --------------------------------------------------------------------------------------------------
def table(kind: str, settings: list[Setting], results: dict, batch: int, impls: list[str]) -> tuple[str, list]:
    """One row per setting: img/s of every implementation, and each one's ratio to diffusers."""
    others = [i for i in impls if i != "diffusers"]
    header = ["setting"] + [f"{i} {kind} img/s" for i in impls]
    if "diffusers" in impls:
        header += [f"{i}/diffusers" for i in others]
    rows, raw = [], []
    for s in settings:
        rec = {"variant": s.name, "setting": s.describe}
        rec.update({i: rate(batch, results[f"{i} {kind} {s.name}"]) for i in impls})
        row = [f"{s.name} ({s.describe})"] + [f"{rec[i]:.1f}" for i in impls]
        if "diffusers" in impls:
            row += [f"{rec[i] / rec['diffusers']:.2f}" for i in others]
        rows.append(row)
        raw.append(rec)
    return format_table(header, rows), raw


def summary(kind: str, raw: list, target: float, impls: list[str]) -> list[str]:
    """Each of ours (and the candidate) at the library defaults vs diffusers at its defaults (fp32, NCHW, eager),
    and best vs best."""
    lines = []
    if "diffusers" not in impls or not raw:
        return lines
    by_name = {r["variant"]: r for r in raw}
    plain = next((r for r in raw if r["setting"] == "fp32, NCHW, eager"), None)
    best_d = max(raw, key=lambda r: r["diffusers"])
    for impl in (i for i in impls if i != "diffusers"):
        if "default" in by_name and plain is not None:
            ratio = by_name["default"][impl] / plain["diffusers"]
            lines.append(f"{kind}: {impl} at library defaults {by_name['default'][impl]:.1f} img/s vs diffusers at "
                         f"its defaults (fp32, NCHW, eager) {plain['diffusers']:.1f} img/s = {ratio:.2f}x "
                         f"({'meets' if ratio >= target else 'misses'} the {target:g}x target)")
        best = max(raw, key=lambda r: r[impl])
        ratio = best[impl] / best_d["diffusers"]
        lines.append(f"{kind}: best of each: {impl} {best[impl]:.1f} img/s ({best['setting']}) vs diffusers "
                     f"{best_d['diffusers']:.1f} img/s ({best_d['setting']}) = {ratio:.2f}x "
                     f"({'meets' if ratio >= target else 'misses'} the {target:g}x target)")
    return lines


def compare_threads(args, counts: list[int]) -> None:
    """Ours (library defaults) training and sampling steps at several intra-op thread counts, interleaved."""
    print(machine())
    with tempfile.TemporaryDirectory(prefix="cpu_speed_") as tmp:
        trainer = our_trainer(args, {}, tmp)
        s = resolve_setting("default", trainer)
        cfg = trainer.config.model
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        sample = our_sampling_step(trainer.model, trainer.schedule, trainer.config.variance, s, args.batch_size, shape)

        def at(n, fn):
            def call():
                torch.set_num_threads(n)
                fn()
            call.steps = getattr(fn, "steps", 1)  # per step, as interleaved() reports the sampler
            return call
        cases = {}
        for n in counts:
            cases[f"train {n}"] = at(n, trainer.train_step)
            cases[f"sample {n}"] = at(n, sample)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        res = interleaved(cases, repeats=args.repeats, warmup=max(args.warmup - 1, 0), clock=clock)
    rows = [[f"{n}", f"{rate(args.batch_size, res[f'train {n}']):.1f}",
             f"{rate(args.batch_size, res[f'sample {n}']):.1f}"] for n in counts]
    print(f"ours at library defaults ({s.describe}), batch {args.batch_size}, {args.repeats} interleaved rounds, "
          f"{args.clock} clock")
    print(format_table(["threads", "train img/s", "sample img/s"], rows))


def candidate_network(path: str, trainer: Trainer) -> torch.nn.Module:
    """The ``UNet`` of ``path`` (a modified copy of src/ddpm/model/unet.py, importing ddpm's modules absolutely)
    built from the trainer's config, with the trainer's weights (same state dict keys)."""
    spec = importlib.util.spec_from_file_location("candidate_unet", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["candidate_unet"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    net = module.UNet(trainer.config.model)
    net.load_state_dict(trainer.model.state_dict())
    return net


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                   help="ddpm.model.unet preset, at its own image size and recipe (default digits)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave it as the library leaves it)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated; tokens joined by '+' (default {DEFAULT_VARIANTS})")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds; each case runs once per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per case before the rounds")
    p.add_argument("--only", choices=("train", "sample"), help="time only training or only sampling")
    p.add_argument("--no-diffusers", action="store_true", help="ours only")
    p.add_argument("--target", type=float, default=1.2, help="speed-up over diffusers to check (default 1.2)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed time (default); cpu: CPU seconds of the process, steadier on a busy "
                        "machine, equal to wall time on an idle one only with --threads 1")
    p.add_argument("--compare-threads", metavar="N,M,...",
                   help="instead of the table: ours at the library defaults with each of these torch thread "
                        "counts, interleaved in one process (shows what a busy machine does to more threads)")
    p.add_argument("--profile", action="store_true",
                   help="after the timing, profile 3 steps of every case of the first variant with torch.profiler "
                        "and print each op group's share of the time")
    p.add_argument("--candidate", metavar="UNET_PY",
                   help="also time a modified copy of src/ddpm/model/unet.py side by side (rows 'candidate'), to "
                        "measure a proposed change before making it; the copy imports ddpm's modules absolutely "
                        "(from ddpm.model.layers import ...)")
    p.add_argument("--json", help="also write the raw samples and rates to this file")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_threads:
        return compare_threads(args, [int(n) for n in args.compare_threads.split(",")])
    with_diffusers = diffusers_available(not args.no_diffusers)

    print(machine())
    impls = ["ours"] + (["candidate"] if args.candidate else []) + (["diffusers"] if with_diffusers else [])
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    kinds = [k for k in ("train", "sample") if args.only in (None, k)]
    cases, settings, first_call = {}, [], {}
    tmp = tempfile.TemporaryDirectory(prefix="cpu_speed_")
    for name in names:
        try:
            overrides = parse_variant(name)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        trainer = our_trainer(args, overrides, str(Path(tmp.name) / name))
        s = resolve_setting(name, trainer)
        settings.append(s)
        cfg = trainer.config.model
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if len(settings) == 1:
            print(f"network: {args.preset} preset {cfg.to_dict()}")
        torch.manual_seed(0)
        theirs = None
        if with_diffusers:
            theirs = with_network(our_trainer(args, overrides, str(Path(tmp.name) / f"{name}-diffusers")),
                                  DiffusersNet(cfg))
            if len(settings) == 1:
                n_ours, n_theirs = check_same_size(trainer.model, theirs.model)
                print(f"parameters: ours {n_ours:,}, diffusers UNet2DModel {n_theirs:,}")
        if "train" in kinds:
            cases[f"ours train {name}"] = trainer.train_step
            if theirs is not None:
                cases[f"diffusers train {name}"] = theirs.train_step
        cand = None
        if args.candidate:
            cand = our_trainer(args, overrides, str(Path(tmp.name) / f"{name}-candidate"))
            cand = with_network(cand, candidate_network(args.candidate, trainer))
            if "train" in kinds:
                cases[f"candidate train {name}"] = cand.train_step
        if "sample" in kinds:
            tc = trainer.config
            cases[f"ours sample {name}"] = our_sampling_step(trainer.model, trainer.schedule, tc.variance, s,
                                                             args.batch_size, shape)
            if cand is not None:
                cases[f"candidate sample {name}"] = our_sampling_step(cand.model, cand.schedule, tc.variance, s,
                                                                      args.batch_size, shape)
            if theirs is not None:
                cases[f"diffusers sample {name}"] = their_sampling_step(theirs.model, tc.schedule, tc.variance, s,
                                                                        args.batch_size, shape)
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.repeats} interleaved rounds, "
          f"{len(cases)} cases; medians of one-step {args.clock} times (sampling: ours over {SAMPLING_STEPS_PER_CALL} "
          f"respaced steps a call, per step)")
    for label, fn in cases.items():  # first call separately: it includes any compilation
        start = time.perf_counter()
        fn()
        first_call[label] = time.perf_counter() - start
    slow = {k: v for k, v in first_call.items() if "compile" in k}
    for k, v in slow.items():
        print(f"first call (compiles) {k}: {v:.0f} s")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = interleaved(cases, repeats=args.repeats, warmup=max(args.warmup - 1, 0), clock=clock,
                          on_round=lambda r: print(f"  round {r + 1}/{args.repeats} done", flush=True))

    report = {"machine": machine(), "preset": args.preset, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "clock": args.clock, "samples_s": results,
              "first_call_s": first_call, "tables": {}}
    lines = []
    for kind, title in (("train", "Training (one optimiser step)"), ("sample", "Sampling (one reverse step)")):
        if kind not in kinds:
            continue
        text, raw = table(kind, settings, results, args.batch_size, impls)
        report["tables"][kind] = raw
        print(f"\n{title}, img/s, batch {args.batch_size}, {torch.get_num_threads()} threads, {args.clock} clock")
        print(text)
        lines += summary(kind, raw, args.target, impls)
    if lines:
        print()
        print("\n".join(lines))
    if args.profile:
        first = settings[0].name
        subset = {k: v for k, v in cases.items() if k.endswith(f" {first}")}
        print(f"\nWhere the time goes: {first} ({settings[0].describe}), share of aten self CPU time over 3 steps")
        report["profile"] = profile(subset, 3)
        print(report["profile"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
