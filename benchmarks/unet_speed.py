"""Throughput of the U-Net noise predictor: training (forward + backward) and inference images per second.

Times ``ddpm.model.unet.UNet`` for a preset (optionally with its fields overridden) and, for comparison, the
same architecture built from diffusers' ``UNet2DModel`` when diffusers is installed.

    python benchmarks/unet_speed.py --preset digits --batch-size 64
    python benchmarks/unet_speed.py --preset digits --base-channels 48 --attention-resolutions none --seconds 5

Keep runs short on shared machines: each measurement runs for about ``--seconds`` seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from _common import DiffusersNet

from ddpm.model.unet import PRESETS, UNet, UNetConfig, count_parameters, preset


def _ints(text: str) -> tuple[int, ...]:
    return () if text.lower() in ("", "none") else tuple(int(v) for v in text.split(","))


def build_config(args) -> UNetConfig:
    overrides = {}
    for name in ("base_channels", "num_res_blocks", "image_size", "num_groups", "dropout", "num_heads"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.channel_mult is not None:
        overrides["channel_mult"] = _ints(args.channel_mult)
    if args.attention_resolutions is not None:
        overrides["attention_resolutions"] = _ints(args.attention_resolutions)
    return preset(args.preset, **overrides)


def diffusers_equivalent(cfg: UNetConfig):
    """The same network as a diffusers UNet2DModel, from the config ``ddpm export`` writes; None without diffusers
    (or, said why, for a network UNet2DModel cannot hold)."""
    try:
        return DiffusersNet(cfg)
    except ImportError:
        return None
    except ValueError as e:
        print(f"diffusers' UNet2DModel cannot hold this network: {e}")
        return None


def _timed(fn, seconds: float, warmup: int) -> list[float]:
    """Seconds of each call of ``fn``, sorted: ``warmup`` untimed calls, then as many as fit in about ``seconds``."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def train_flops(model: torch.nn.Module, call, cfg: UNetConfig) -> float:
    """FLOPs of one training image (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        call(model, x, torch.tensor([1, 2])).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def measure(model: torch.nn.Module, call, cfg: UNetConfig, args) -> dict:
    """Training and inference img/s of ``call(model, x, t)``: the median call and the fastest call.

    The median is the figure to quote on a quiet machine; on a shared one the fastest call is the closer
    estimate of what the hardware can do.
    """
    b, size = args.batch_size, cfg.image_size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(b, cfg.in_channels, size, size).to(memory_format=fmt)
    t = torch.randint(0, 1000, (b,))
    target = torch.randn(b, cfg.output_channels, size, size)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def train_step():
        model.zero_grad(set_to_none=True)
        with amp:
            out = call(model, x, t)
        F.mse_loss(out.float(), target).backward()

    def infer_step():
        with torch.inference_mode(), amp:
            call(model, x, t)

    model.train()
    train = _timed(train_step, args.seconds, args.warmup)
    model.eval()
    infer = _timed(infer_step, args.seconds, args.warmup)
    return {"train": b / train[len(train) // 2], "train_best": b / train[0],
            "infer": b / infer[len(infer) // 2], "infer_best": b / infer[0]}


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                   help="ddpm.model.unet preset, at its own image size unless --image-size (default digits)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--base-channels", type=int)
    p.add_argument("--channel-mult", help="comma-separated, e.g. 1,2,2")
    p.add_argument("--num-res-blocks", type=int)
    p.add_argument("--attention-resolutions", help="comma-separated sizes, or 'none'")
    p.add_argument("--image-size", type=int)
    p.add_argument("--num-groups", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--dropout", type=float)
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = build_config(args)
    print(f"config: {cfg.to_dict()}")
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads, channels_last={args.channels_last}, "
          f"bf16={args.bf16}, torch {torch.__version__}")
    rows = [("ddpm.model.unet.UNet", UNet(cfg), lambda m, x, t: m(x, t))]
    if not args.no_diffusers:
        ref = diffusers_equivalent(cfg)
        if ref is None:
            print("diffusers is not installed: skipping the UNet2DModel comparison")
        else:
            rows.append(("diffusers UNet2DModel", ref, lambda m, x, t: m(x, t)))
    print(f"{'model':<24}{'params':>11}{'train GFLOP/img':>17}{'train img/s (best)':>22}{'infer img/s (best)':>22}")
    for name, model, call in rows:
        flops = train_flops(model, call, cfg)
        r = measure(model, call, cfg, args)
        print(f"{name:<24}{count_parameters(model):>11,}{flops / 1e9:>17.2f}"
              f"{r['train']:>14.1f} ({r['train_best']:5.1f}){r['infer']:>14.1f} ({r['infer_best']:5.1f})", flush=True)


if __name__ == "__main__":
    main()
