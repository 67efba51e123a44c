"""GPU throughput of ddpm against diffusers on the paper's CIFAR-10 network: training img/s, sampling img-steps/s, MFU.

Training (batch 128): ``ddpm.training.trainer.Trainer.train_step`` itself (bf16 autocast, channels_last, fused AdamW,
gradient clipping, EMA; data from a synthetic uint8 array through the library's loader), eager and with the
trainer's ``compile`` switch; beside it diffusers' ``UNet2DModel`` built from the config ``ddpm export`` writes,
trained by the same ``Trainer.train_step`` with the network swapped.

Sampling (batch 512, bf16, channels_last): the network alone and one full reverse step (ours:
``ddpm.core.samplers.ancestral_sample`` over a few respaced steps, per step; diffusers: network and
``DDPMScheduler.step``), with the network eager, captured in a CUDA graph, or compiled.

Model-FLOP utilisation: forward FLOPs of one image from ``torch.utils.flop_counter.FlopCounterMode``; a
training image costs 3x that (forward + backward); the peak is the GPU's dense bf16 rate (``--peak-tflops``).

    python benchmarks/gpu_speed.py              # one GPU, about 4-5 minutes with compilation
    python benchmarks/gpu_speed.py --dry-run    # no GPU needed: tiny network on the CPU, checks the logic
    python benchmarks/gpu_speed.py --no-compile # eager and CUDA-graph rows only, under a minute

Targets on one H100: >= 5,000 training img/s and >= 15,000 sampling img-steps/s.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    DiffusersNet,
    check_same_size,
    diffusers_available,
    eval_copy,
    format_table,
    forward_flops,
    interleaved,
    machine,
    our_sampling_step,
    rate,
    resolve_setting,
    their_sampling_step,
    with_network,
)

from ddpm.data.datasets import DataConfig
from ddpm.model.unet import PRESETS, UNet, preset
from ddpm.runs.config import TrainConfig
from ddpm.training.trainer import Trainer

#: dense bf16 tensor-core peaks in TFLOP/s, matched against torch.cuda.get_device_name() in order
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))
TRAIN_TARGET, SAMPLE_TARGET = 5000.0, 15000.0


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def synthetic_data(folder: Path, cfg, n: int) -> DataConfig:
    """A .npy of n random uint8 images in the network's shape, read through the library's own loader."""
    rng = np.random.default_rng(0)
    shape = (n, cfg.image_size, cfg.image_size) + ((cfg.in_channels,) if cfg.in_channels == 3 else ())
    path = folder / "images.npy"
    np.save(path, rng.integers(0, 256, size=shape, dtype=np.uint8))
    return DataConfig(source=str(path), image_size=cfg.image_size, channels=cfg.in_channels)


def cuda_graphed(net: torch.nn.Module, s):
    """``f(x, t)`` replaying CUDA graphs of ``net`` through the library's :class:`ddpm.model.cudagraph.GraphedNetwork`
    (what ``ddpm sample --cuda-graph`` uses), bf16 autocast per ``s``."""
    from ddpm.model.cudagraph import GraphedNetwork

    def call(x, t):
        out = net(x, t)
        return out.sample if hasattr(out, "sample") else out
    return GraphedNetwork(call, autocast_dtype=torch.bfloat16 if s.bf16 else None, memory_format=s.memory_format)


def network_only(f, s, batch: int, shape: tuple[int, ...]):
    """Time just the network call ``f(x, t)`` (a module or a graphed callable) under inference mode."""
    with torch.inference_mode():  # inference tensors, like the sampler's, so a compiled net sees one guard set
        x = torch.randn((batch, *shape), device=s.device).contiguous(memory_format=s.memory_format)
        t = torch.full((batch,), 500, dtype=torch.long, device=s.device)

    @torch.inference_mode()
    def step():
        with s.autocast():
            f(x, t)
    return step


class Budget:
    """Skips compiled cases once the remaining time cannot hold another compilation."""

    def __init__(self, seconds: float, guess_s: float = 90.0, reserve_s: float = 30.0):
        self.start, self.seconds, self.guess_s, self.reserve_s = time.perf_counter(), seconds, guess_s, reserve_s
        self.observed: list[float] = []
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows_compile(self, label: str) -> bool:
        """True when the longest compilation seen so far (or a 90 s guess) still fits, with time left to time."""
        if self.left() < (max(self.observed) if self.observed else self.guess_s) + self.reserve_s:
            self.skipped.append(label)
            return False
        return True

    def compiled(self, seconds: float):
        self.observed.append(seconds)


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cifar10", choices=sorted(PRESETS),
                   help="ddpm.model.unet preset, at its own image size (default cifar10)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--sample-batch-size", type=int, default=512, help="sampling batch (default 512)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu; cpu is only meant for checks")
    p.add_argument("--dry-run", action="store_true",
                   help="check the logic on the CPU in seconds: tiny preset, batches 4/8, one round, "
                        "torch.compile with the 'eager' backend, no CUDA graphs")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--calls", type=int, default=5, help="steps per timed sample (default 5)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    p.add_argument("--no-diffusers", action="store_true", help="ours only")
    p.add_argument("--budget-s", type=float, default=290.0,
                   help="skip further compilations once they would overrun this many seconds (default 290)")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default: known GPUs)")
    p.add_argument("--json", help="also write the results to this file")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    budget = Budget(args.budget_s)

    if args.dry_run:
        args.device = "cpu"
        args.preset = "tiny" if args.preset == "cifar10" else args.preset
        args.batch_size, args.sample_batch_size = min(args.batch_size, 4), min(args.sample_batch_size, 8)
        args.repeats, args.calls = 1, 1
        torch.compile = functools.partial(torch.compile, backend="eager")  # exercise the path, skip codegen
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_speed: CUDA is not available on this machine, so there is nothing to measure. Run it on one "
              "GPU (the documented targets are for one H100), or check its logic here with --dry-run.")
        return 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    with_diffusers = diffusers_available(not args.no_diffusers)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    cfg = preset(args.preset)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    print(machine() if device.type == "cpu" else
          f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}; CUDA {torch.version.cuda}")
    fwd = forward_flops(UNet(cfg), torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
    peak = peak_flops(device, args.peak_tflops)
    print(f"network: {args.preset} preset, {sum(p.numel() for p in UNet(cfg).parameters()):,} parameters, "
          f"{fwd / 1e9:.2f} GFLOP per image forward; peak bf16 "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")

    tmp = tempfile.TemporaryDirectory(prefix="gpu_speed_")
    data = synthetic_data(Path(tmp.name), cfg, max(4 * args.batch_size, 512))

    def trainer(label: str, compile_: bool) -> Trainer:
        tc = TrainConfig.for_preset(args.preset, run_dir=str(Path(tmp.name) / label), data=data,
                                    batch_size=args.batch_size, device=str(device), precision="bf16",
                                    channels_last="on", compile="on" if compile_ else "off", progress=False)
        return Trainer(tc)

    rows = []  # (kind, implementation, mode, items per call, first-call seconds, case label)
    first = {}

    def first_call(label, fn, compiled: bool):
        start = time.perf_counter()
        try:
            fn()
            sync()
        except Exception as e:  # a backend that cannot compile or capture this network: report, go on
            print(f"  {label}: failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            return False
        first[label] = time.perf_counter() - start
        if compiled:
            budget.compiled(first[label])
        print(f"  {label}: first call {first[label]:.1f} s", flush=True)
        return True

    # -- training ----------------------------------------------------------------------------------------------
    train_cases = {}
    print("training cases (first calls include compilation):")
    eager = trainer("ours-eager", False)
    s_eager = resolve_setting("eager", eager)
    if first_call("ours train eager", eager.train_step, False):
        train_cases["ours train eager"] = eager.train_step
        rows.append(("train", "ours", s_eager.describe, args.batch_size, "ours train eager"))
    theirs = None
    if with_diffusers:
        torch.manual_seed(0)
        try:  # one unit of the run: if diffusers cannot be built here, the rows of ours still come out
            theirs = DiffusersNet(cfg)
            n_ours, n_theirs = check_same_size(eager.model, theirs)
            print(f"  parameters: ours {n_ours:,}, diffusers {n_theirs:,}")
            step = with_network(trainer("diffusers-eager", False), copy.deepcopy(theirs)).train_step
        except Exception as e:  # noqa: BLE001
            print(f"  diffusers could not be set up ({type(e).__name__}: {str(e).splitlines()[0][:160]}): ours only")
            theirs, with_diffusers = None, False
    if theirs is not None:
        if first_call("diffusers train eager", step, False):
            train_cases["diffusers train eager"] = step
            rows.append(("train", "diffusers", s_eager.describe, args.batch_size, "diffusers train eager"))
    if not args.no_compile:
        if budget.allows_compile("ours train compiled"):
            comp = trainer("ours-compiled", True)
            s_comp = resolve_setting("compiled", comp)
            if first_call("ours train compiled", comp.train_step, True):
                train_cases["ours train compiled"] = comp.train_step
                rows.append(("train", "ours", s_comp.describe, args.batch_size, "ours train compiled"))
            if with_diffusers and budget.allows_compile("diffusers train compiled"):
                step = with_network(trainer("diffusers-compiled", True), copy.deepcopy(theirs)).train_step
                if first_call("diffusers train compiled", step, True):
                    train_cases["diffusers train compiled"] = step
                    rows.append(("train", "diffusers", s_comp.describe, args.batch_size, "diffusers train compiled"))

    # -- sampling ----------------------------------------------------------------------------------------------
    sample_cases = {}
    print("sampling cases:")
    b = args.sample_batch_size
    tcfg = eager.config
    impls = [("ours", eager.model)] + ([("diffusers", theirs)] if theirs is not None else [])

    def add_sampling(impl, model_or_fn, s, mode):
        net_label, step_label = f"{impl} network {mode}", f"{impl} step {mode}"
        net = model_or_fn
        if isinstance(net, torch.nn.Module):
            net = eval_copy(net, s)
        if impl == "ours":
            step = our_sampling_step(net, eager.schedule, tcfg.variance, s, b, shape)
        else:
            step = their_sampling_step(net, tcfg.schedule, tcfg.variance, s, b, shape)
        net_step = network_only(net, s, b, shape)
        if first_call(net_label, net_step, s.compile):
            sample_cases[net_label] = net_step
            rows.append(("network", impl, f"{s.describe}{'' if mode != 'graph' else ', CUDA graph'}", b, net_label))
        if first_call(step_label, step, False):
            sample_cases[step_label] = step
            rows.append(("step", impl, f"{s.describe}{'' if mode != 'graph' else ', CUDA graph'}", b, step_label))

    for impl, model in impls:
        add_sampling(impl, model, s_eager, "eager")
    if device.type == "cuda":
        for impl, model in impls:
            try:
                graphed = cuda_graphed(eval_copy(model, s_eager), s_eager)
            except Exception as e:
                print(f"  {impl} CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
                continue
            add_sampling(impl, graphed, s_eager, "graph")
    else:
        print("  CUDA graph rows need CUDA: skipped")
    if not args.no_compile:
        s_c = copy.copy(s_eager)
        s_c.compile = True
        for impl, model in impls:
            if budget.allows_compile(f"{impl} sampling compiled"):
                add_sampling(impl, model, s_c, "compiled")

    # -- timing and report -------------------------------------------------------------------------------------
    print(f"timing: {args.repeats} interleaved rounds of {args.calls} steps per case", flush=True)
    res = {}

    def timed(cases):
        """Interleaved rounds; if one case fails there, time the others one by one and drop that one."""
        try:
            return interleaved(cases, repeats=args.repeats, warmup=1, sync=sync, calls=args.calls)
        except Exception as e:  # noqa: BLE001
            print(f"  interleaved timing failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); case by case")
        out = {}
        for label, fn in cases.items():
            try:
                out.update(interleaved({label: fn}, repeats=args.repeats, warmup=1, sync=sync, calls=args.calls))
            except Exception as e:  # noqa: BLE001
                print(f"  {label}: timing failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); row dropped")
        return out
    if train_cases:
        res.update(timed(train_cases))
    if sample_cases:
        res.update(timed(sample_cases))
    rows = [row for row in rows if row[-1] in res]
    header = ["what", "implementation", "setting", "img/s", "TFLOP/s", "MFU", "first call s"]
    table, raw = [], []
    titles = {"train": "train (batch %d)" % args.batch_size, "network": "network (batch %d)" % b,
              "step": "sampling step (batch %d)" % b}
    for kind, impl, setting, items, label in rows:
        r = rate(items, res[label])
        flops = r * fwd * (3 if kind == "train" else 1)
        table.append([titles[kind], impl, setting, f"{r:,.0f}", f"{flops / 1e12:.1f}",
                      f"{flops / peak:.1%}" if peak else "n/a", f"{first[label]:.1f}"])
        raw.append({"kind": kind, "implementation": impl, "setting": setting, "rate": r, "tflops": flops / 1e12,
                    "mfu": flops / peak if peak else None, "first_call_s": first[label]})
    print()
    print(format_table(header, table))
    if budget.skipped:
        print(f"skipped to stay within {args.budget_s:.0f} s: {', '.join(budget.skipped)}")
    best_train = max((x["rate"] for x in raw if x["kind"] == "train" and x["implementation"] == "ours"), default=0)
    best_step = max((x["rate"] for x in raw if x["kind"] == "step" and x["implementation"] == "ours"), default=0)
    if device.type == "cuda":
        print(f"targets on one H100: training {best_train:,.0f} img/s vs >= {TRAIN_TARGET:,.0f} "
              f"({'met' if best_train >= TRAIN_TARGET else 'missed'}); sampling {best_step:,.0f} img-steps/s vs "
              f">= {SAMPLE_TARGET:,.0f} ({'met' if best_step >= SAMPLE_TARGET else 'missed'})")
    else:
        print("dry run / CPU: the logic ran end to end; the numbers mean nothing for a GPU")
    print(f"total {time.perf_counter() - budget.start:.0f} s")
    if args.json:
        import importlib.metadata as md
        versions = {}
        for name in ("torch", "diffusers"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        Path(args.json).write_text(json.dumps({"device": str(device), "gpu": gpu, "versions": versions,
                                               "preset": args.preset,
                                               "forward_flops_per_image": fwd, "peak_flops": peak,
                                               "rows": raw, "skipped": budget.skipped}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
