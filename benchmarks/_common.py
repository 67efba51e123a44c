"""Shared pieces of the speed benchmarks (cpu_speed.py, gpu_speed.py).

* :func:`diffusers_unet` builds diffusers' ``UNet2DModel`` with the architecture of a :class:`ddpm.unet.UNetConfig`
  (the layout of google/ddpm-cifar10-32) and :func:`check_same_size` verifies the parameter counts agree.
* :func:`diffusers_scheduler` is the matching ``DDPMScheduler`` (same betas, sigma_t^2 = beta_t, clipped x0).
* :func:`interleaved` times several step functions round-robin, so slow phases of a shared machine hit every
  case alike, and :func:`median` / :func:`rate` summarise the samples.
* :func:`machine` describes the CPU, the thread count and the library versions for the report.
* :class:`Setting` is a hardware variant as the trainer resolves it; :func:`parse_variant` reads one from
  text; :func:`their_training_step`, :func:`our_sampling_step` and :func:`their_sampling_step` build the
  timed steps (ours trains through ``Trainer.train_step`` itself).
"""
from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ddpm.data import Batches
from ddpm.diffusion import p_mean_variance
from ddpm.samplers import PerSampleNoise
from ddpm.schedule import ScheduleConfig
from ddpm.train import Trainer, ema_decay_at, lr_at
from ddpm.unet import UNetConfig, count_parameters, group_count

__all__ = ["diffusers_unet", "diffusers_scheduler", "check_same_size", "interleaved", "median", "rate",
           "machine", "cpu_model", "forward_flops", "format_table", "Setting", "TOKENS", "parse_variant",
           "resolve_setting", "eval_copy", "their_training_step", "our_sampling_step", "their_sampling_step"]


def diffusers_unet(cfg: UNetConfig):
    """diffusers' UNet2DModel with the architecture of ``cfg``; raises ImportError without diffusers.

    Same widths, blocks per level, attention resolutions, dropout, epsilon and time embedding (sin then cos,
    no shift, as in the DDPM code).  diffusers uses one GroupNorm group count for every layer, so this takes
    the largest count <= cfg.num_groups that divides every width; ours picks per layer (ddpm.unet.group_count).
    Single-head attention unless cfg.num_heads > 1.
    """
    from diffusers import UNet2DModel

    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    attn = [r in cfg.attention_resolutions for r in cfg.resolutions]
    groups = group_count(widths[0], cfg.num_groups)
    while any(w % groups for w in widths):
        groups -= 1
    head_dim = None if cfg.num_heads == 1 else widths[-1] // cfg.num_heads
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.output_channels,
        block_out_channels=tuple(widths), layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        dropout=cfg.dropout, norm_num_groups=groups, norm_eps=1e-6, attention_head_dim=head_dim,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=1,
    )


def diffusers_scheduler(sched: ScheduleConfig | None = None, variance: str = "fixed-large"):
    """diffusers' DDPMScheduler with our linear betas, our variance choice and x0 clipping, set to all T steps."""
    from diffusers import DDPMScheduler

    sched = sched or ScheduleConfig()
    if sched.kind != "linear":
        raise ValueError("the diffusers comparison uses the linear schedule")
    s = DDPMScheduler(num_train_timesteps=sched.num_timesteps, beta_start=sched.beta_start, beta_end=sched.beta_end,
                      beta_schedule="linear", variance_type=variance.replace("-", "_"), clip_sample=True,
                      prediction_type="epsilon")
    s.set_timesteps(sched.num_timesteps)
    return s


def check_same_size(ours: torch.nn.Module, theirs: torch.nn.Module, tolerance: float = 0.03) -> tuple[int, int]:
    """(our count, their count); ValueError when they differ by more than ``tolerance`` (relative)."""
    a, b = count_parameters(ours), count_parameters(theirs)
    if abs(a - b) > tolerance * max(a, b):
        raise ValueError(f"the two networks differ in size: {a:,} vs {b:,} parameters; the comparison would "
                         f"not be like for like")
    return a, b


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] | None = None, calls: int = 1,
                on_round: Callable[[int], None] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of every case, measured round-robin: A, B, C, A, B, C, ...

    Each case first runs ``warmup`` untimed calls; then ``repeats`` rounds each time ``calls`` back-to-back
    calls of every case (``sync()`` before stopping the clock, e.g. torch.cuda.synchronize).  The order
    rotates by one every round so no case always follows the same neighbour.  ``clock`` is wall time by
    default; ``time.process_time`` (CPU seconds of the whole process) is far steadier on a busy machine when
    torch runs one thread, and with several threads it is their sum, not the elapsed time.
    """
    names = list(cases)
    sync = sync or (lambda: None)
    for name in names:
        for _ in range(warmup):
            cases[name]()
        sync()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = cases[name]
            sync()
            start = clock()
            for _ in range(calls):
                fn()
            sync()
            samples[name].append((clock() - start) / calls)
        if on_round is not None:
            on_round(r)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def rate(items: int, seconds: list[float]) -> float:
    """items per second from the median of the per-call times."""
    return items / statistics.median(seconds)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> str:
    """One line: CPU model, logical CPUs, torch threads, relevant ISA flags, library versions, load average."""
    flags = _cpu_flags()
    isa = ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "?"
    try:
        import diffusers
        dv = diffusers.__version__
    except ImportError:
        dv = "not installed"
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f}"
    return (f"{cpu_model()} ({os.cpu_count()} logical CPUs, {isa}); torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; diffusers {dv}; Python {platform.python_version()}{load}")


def forward_flops(model: torch.nn.Module, *inputs) -> int:
    """FLOPs of one forward pass (torch.utils.flop_counter: matmuls and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; columns whose cells all read as numbers (commas, %, x allowed) are right-aligned."""
    def numeric(cell) -> bool:
        text = str(cell).replace(",", "").rstrip("%x")
        try:
            float(text)
            return True
        except ValueError:
            return text in ("n/a", "-")
    cols = range(len(header))
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in cols]
    right = [bool(rows) and all(numeric(r[i]) for r in rows) for i in cols]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])
