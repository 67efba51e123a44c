"""Measuring and reporting helpers of the speed benchmarks (cpu_speed.py, gpu_speed.py, unet_speed.py, ...).

Nothing here trains or samples on its own: every timed step is the library's (``ddpm.training.Trainer.train_step``,
``ddpm.core.samplers.ancestral_sample``) or diffusers' (``DDPMScheduler.step``).  What is here:

* :func:`interleaved` times several step functions round-robin, so slow phases of a shared machine hit every
  case alike, and :func:`median` / :func:`rate` summarise the samples; :func:`machine` describes the CPU, the
  thread count and the library versions for the report; :func:`format_table` writes Markdown.
* :class:`DiffusersNet` is diffusers' ``UNet2DModel`` built from the config ddpm itself exports
  (``ddpm.runs.diffusers_format.diffusers_unet_config``), called like ddpm's network; :func:`with_network` puts
  such a network into a ``Trainer`` so that the library's own training step drives it.
* :class:`Setting` is a hardware variant as a trainer resolved it; :func:`parse_variant` reads one from text.
* :func:`our_sampling_step` and :func:`their_sampling_step` build the timed sampling steps.

Scripts import this module as ``from _common import ...``: ``python benchmarks/NAME.py`` puts benchmarks/ on the
import path itself.
"""
from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ddpm.core.samplers import PerSampleNoise, ancestral_sample, ancestral_timesteps
from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.model.unet import UNetConfig, count_parameters
from ddpm.runs.diffusers_format import diffusers_scheduler_config, diffusers_unet_config
from ddpm.runtime.precision import autocast_dtype
from ddpm.training.trainer import Trainer

__all__ = ["DiffusersNet", "with_network", "diffusers_scheduler", "check_same_size", "interleaved", "median", "rate",
           "machine", "cpu_model", "forward_flops", "format_table", "Setting", "TOKENS", "parse_variant",
           "resolve_setting", "eval_copy", "our_sampling_step", "their_sampling_step", "diffusers_available",
           "SAMPLING_STEPS_PER_CALL"]

#: reverse steps in one timed call of :func:`our_sampling_step` (ancestral_sample on a respaced plan); the
#: timings are divided by it, so the tables show one step
SAMPLING_STEPS_PER_CALL = 10


class DiffusersNet(torch.nn.Module):
    """diffusers' ``UNet2DModel`` with the architecture of ``cfg``, called as ddpm's network is:
    ``net(x, t, y=None)`` returns the output tensor.  The config is the one ``ddpm export`` writes
    (:func:`ddpm.runs.diffusers_format.diffusers_unet_config`); raises ImportError without diffusers and
    ValueError for a network UNet2DModel cannot hold."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = cfg
        self.net = UNet2DModel.from_config(diffusers_unet_config(cfg))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None and self.config.num_classes:
            y = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
        return self.net(x, t, class_labels=y).sample


def with_network(trainer: Trainer, net: torch.nn.Module, compile_: bool | None = None) -> Trainer:
    """``trainer`` training ``net`` instead of its own U-Net: the same data order, t and eps draws, loss, clipping,
    AdamW (fused on CUDA, as the trainer builds it), EMA and bookkeeping, through ``trainer.train_step``.
    ``compile_``: compile ``net`` (default: as the trainer compiled its own network; a compiled trainer must have
    said compile "on", since "auto" may fall back to its own eager network on the first step)."""
    compiled = trainer.forward is not trainer.model if compile_ is None else compile_
    if compiled and trainer.config.compile == "auto":  # its first step could fall back to its own network, eagerly
        raise ValueError("with_network: build the trainer with compile 'on' or 'off', not 'auto'")
    net = net.to(trainer.device).train()
    if any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
           for p in trainer.model.parameters() if p.ndim == 4):
        net = net.to(memory_format=torch.channels_last)
    old = trainer.optimizer.defaults
    trainer.model = net
    trainer.ema = copy.deepcopy(net).eval().requires_grad_(False)
    trainer.optimizer = type(trainer.optimizer)(net.parameters(), lr=old["lr"], weight_decay=old["weight_decay"],
                                                fused=old.get("fused"))
    trainer.forward = torch.compile(net) if compiled else net
    return trainer


def diffusers_scheduler(sched: ScheduleConfig | None = None, variance: str = "fixed-large"):
    """diffusers' DDPMScheduler from the scheduler config ddpm exports (same betas and variance, x0 clipped), set
    to all T steps."""
    from diffusers import DDPMScheduler

    sched = sched or ScheduleConfig()
    betas = make_schedule(sched).betas
    s = DDPMScheduler.from_config(diffusers_scheduler_config(sched, variance, betas))
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
    default; a case with a ``steps`` attribute runs that many steps a call and is reported per step.
    ``time.process_time`` (CPU seconds of the whole process) is far steadier on a busy machine when
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
            samples[name].append((clock() - start) / calls / getattr(fn, "steps", 1))
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
    """A variant as a trainer resolved it on its device."""

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
    """What ``trainer`` actually does, read off it: its weights' memory format, whether its forward is compiled,
    and the autocast type its precision gives on its device (``ddpm.runtime.precision.autocast_dtype``)."""
    convs = [p for p in trainer.model.parameters() if p.ndim == 4 and not p.is_contiguous()]
    channels_last = bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    return Setting(name, trainer.device, channels_last=channels_last,
                   bf16=autocast_dtype(trainer.device, trainer.config.precision) is torch.bfloat16,
                   compile=trainer.forward is not trainer.model)


def eval_copy(model: torch.nn.Module, s: Setting, compile_kw: dict | None = None):
    """An inference copy of ``model`` on the setting's device and memory format, compiled if asked."""
    m = copy.deepcopy(model).to(s.device).eval().requires_grad_(False).to(memory_format=s.memory_format)
    return torch.compile(m, **(compile_kw or {})) if s.compile else m


# -- the timed sampling steps --------------------------------------------------------------------------------
def our_sampling_step(model, schedule, variance: str, s: Setting, batch: int, shape: tuple[int, ...],
                      compile_kw: dict | None = None, steps: int = SAMPLING_STEPS_PER_CALL):
    """The library's ancestral sampler (``ddpm.core.samplers.ancestral_sample``: the network under inference mode,
    ``p_mean_variance`` with clipped x0, per-sample noise) over a respaced plan of ``steps`` steps per call; the
    returned function's ``steps`` attribute tells :func:`interleaved` to report one step.

    ``model``: a network (copied to the setting's device and memory format, compiled if the setting says so)
    or any other callable ``f(x, t)`` (a CUDA-graphed network, an already compiled one), used as is; either is
    called in the setting's memory format and autocast, its output as float32.
    """
    net = eval_copy(model, s, compile_kw) if isinstance(model, torch.nn.Module) else model

    def f(x, t, y=None):
        with s.autocast():
            x = x.contiguous(memory_format=s.memory_format)
            out = net(x, t) if y is None else net(x, t, y)
        return out.float()
    plan = ancestral_timesteps(schedule, steps)
    seeds = iter(range(10**9))

    def step():
        noise = PerSampleNoise([next(seeds) for _ in range(batch)], s.device)
        ancestral_sample(f, schedule, noise, shape, variance=variance, clip_denoised=True, timesteps=plan)
    step.steps = len(plan)
    return step


def their_sampling_step(model, sched_cfg: ScheduleConfig, variance: str, s: Setting, batch: int,
                        shape: tuple[int, ...], compile_kw: dict | None = None):
    """diffusers' network, then ``DDPMScheduler.step`` (same variance, clipped x0), in the same setting, one step
    per call.  ``model`` as in :func:`our_sampling_step`."""
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


def headless_chromium(args):
    """A Selenium driver of headless Chromium (``args.chromium``, ``args.chromedriver``) whose viewport is exactly
    ``args.width`` x ``args.height``, with a throw-away profile and no background network, for the screenshots."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--hide-scrollbars", f"--window-size={args.width},{args.height}",
              f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport exactly, not the window
                           {"width": args.width, "height": args.height, "deviceScaleFactor": 1, "mobile": False})
    return driver
