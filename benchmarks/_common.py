"""Shared pieces of the speed benchmarks (cpu_speed.py, gpu_speed.py).

* :func:`diffusers_unet` builds diffusers' ``UNet2DModel`` with the architecture of a :class:`ddpm.model.unet.UNetConfig`
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

from ddpm.core.diffusion import p_mean_variance
from ddpm.core.samplers import PerSampleNoise
from ddpm.core.schedule import ScheduleConfig
from ddpm.data.batches import Batches
from ddpm.model.unet import UNetConfig, count_parameters, group_count
from ddpm.training.rates import ema_decay_at, lr_at
from ddpm.training.trainer import Trainer

__all__ = ["diffusers_unet", "diffusers_scheduler", "check_same_size", "interleaved", "median", "rate",
           "machine", "cpu_model", "forward_flops", "format_table", "Setting", "TOKENS", "parse_variant",
           "resolve_setting", "eval_copy", "their_training_step", "our_sampling_step", "their_sampling_step"]


def diffusers_unet(cfg: UNetConfig):
    """diffusers' UNet2DModel with the architecture of ``cfg``; raises ImportError without diffusers.

    Same widths, blocks per level, attention resolutions, dropout, epsilon and time embedding (sin then cos,
    no shift, as in the DDPM code).  diffusers uses one GroupNorm group count for every layer, so this takes
    the largest count <= cfg.num_groups that divides every width; ours picks per layer (ddpm.model.unet.group_count).
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


# -- hardware variants ---------------------------------------------------------------------------------------
#: variant tokens -> TrainConfig field overrides; "default" keeps every field at "auto"
TOKENS = {"channels_last": ("channels_last", "on"), "cl": ("channels_last", "on"), "nchw": ("channels_last", "off"),
          "bf16": ("precision", "bf16"), "fp32": ("precision", "fp32"),
          "compile": ("compile", "on"), "eager": ("compile", "off")}


def parse_variant(name: str) -> dict:
    """'channels_last+bf16' -> {"channels_last": "on", "precision": "bf16"}; 'default' -> {} (all auto)."""
    overrides = {}
    for token in name.split("+"):
        token = token.strip().lower()
        if token in ("", "default"):
            continue
        if token not in TOKENS:
            raise ValueError(f"unknown variant token {token!r}; use default or {sorted(TOKENS)} joined by '+'")
        key, value = TOKENS[token]
        overrides[key] = value
    return overrides


@dataclass
class Setting:
    """A variant as the trainer resolves it on its device."""

    name: str
    device: torch.device
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
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def resolve_setting(name: str, trainer: Trainer) -> Setting:
    """What ``trainer`` actually does (its own ``auto`` rules on its device)."""
    return Setting(name, trainer.device, channels_last=trainer._want("channels_last"),
                   bf16=trainer._autocast_dtype() is not None, compile=trainer._want("compile"))


def eval_copy(model: torch.nn.Module, s: Setting, compile_kw: dict | None = None):
    """An inference copy of ``model`` on the setting's device and memory format, compiled if asked."""
    m = copy.deepcopy(model).to(s.device).eval().requires_grad_(False).to(memory_format=s.memory_format)
    return torch.compile(m, **(compile_kw or {})) if s.compile else m


# -- the timed steps -----------------------------------------------------------------------------------------
def their_training_step(model: torch.nn.Module, trainer: Trainer, s: Setting, images: torch.Tensor):
    """``trainer.train_step`` with diffusers' network and ``DDPMScheduler.add_noise`` in place of ours.

    Same data order, t and eps draws (same seeds), autocast, memory format, compile, gradient clipping, AdamW
    (fused on CUDA, as the trainer does) and EMA update.
    """
    cfg, dev = trainer.config, trainer.device
    scheduler = diffusers_scheduler(cfg.schedule, cfg.variance)
    model = model.to(dev).train().to(memory_format=s.memory_format)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    forward = torch.compile(model) if s.compile else model
    fused = {"fused": True} if dev.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    batches = Batches(images, batch_size=cfg.batch_size, seed=cfg.seed, hflip=cfg.data.hflip, device=dev)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    state = {"step": 0}

    def step():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], cfg.lr, cfg.warmup_steps)
        x0 = next(batches)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen, device=dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev)
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


def our_sampling_step(model, schedule, variance: str, s: Setting, batch: int, shape: tuple[int, ...],
                      compile_kw: dict | None = None):
    """One k > 0 iteration of ``ddpm.core.samplers.ancestral_sample``'s loop: the network under inference mode,
    ``p_mean_variance`` with clipped x0, and per-sample noise from :class:`ddpm.core.samplers.PerSampleNoise`.

    ``model``: a network (copied to the setting's device and memory format, compiled if the setting says so)
    or any other callable ``f(x, t)`` (a CUDA-graphed network, an already compiled one), used as is.
    """
    net = eval_copy(model, s, compile_kw) if isinstance(model, torch.nn.Module) else model
    noise = PerSampleNoise(range(batch), s.device)
    T = schedule.num_timesteps
    with torch.inference_mode():  # every x the loop sees is an inference tensor: one set of compile guards
        state = {"x": noise.randn(shape).contiguous(memory_format=s.memory_format), "t": T - 1}

    @torch.inference_mode()
    def step():
        x, t = state["x"], state["t"]
        tt = torch.full((batch,), t, dtype=torch.long, device=s.device)
        with s.autocast():
            out = net(x, tt)
        out = p_mean_variance(schedule, out.float(), x, tt, variance=variance, clip_denoised=True)
        state["x"] = out.mean + (0.5 * out.log_variance).exp() * noise.randn(shape)
        state["t"] = t - 1 if t > 1 else T - 1  # stay on k > 0 steps
    return step


def their_sampling_step(model, sched_cfg: ScheduleConfig, variance: str, s: Setting, batch: int,
                        shape: tuple[int, ...], compile_kw: dict | None = None):
    """diffusers' network, then ``DDPMScheduler.step`` (same variance, clipped x0), in the same setting.
    ``model`` as in :func:`our_sampling_step`."""
    scheduler = diffusers_scheduler(sched_cfg, variance)
    net = eval_copy(model, s, compile_kw) if isinstance(model, torch.nn.Module) else model
    gen = torch.Generator(device=s.device).manual_seed(0)
    T = sched_cfg.num_timesteps
    with torch.inference_mode():
        x = torch.randn((batch, *shape), generator=gen, device=s.device)
        state = {"x": x.contiguous(memory_format=s.memory_format), "t": T - 1}

    @torch.inference_mode()
    def step():
        x, t = state["x"], state["t"]
        with s.autocast():
            out = net(x, torch.full((batch,), t, dtype=torch.long, device=s.device))
        out = out.sample if hasattr(out, "sample") else out
        state["x"] = scheduler.step(out.float(), t, x, generator=gen).prev_sample
        state["t"] = t - 1 if t > 1 else T - 1
    return step


def diffusers_available(wanted: bool = True) -> bool:
    """Whether to time diffusers beside ours: ``wanted`` and importable (says so when it is not)."""
    if not wanted:
        return False
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers is not installed (pip install -e '.[bench]'): timing ours only")
        return False
    return True
