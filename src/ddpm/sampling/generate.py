"""Sampling from a trained run: load the weights, run a sampler, write the pictures.

``sample(run, n)`` is the Python twin of ``ddpm sample``.  Sample k of a call with base seed s is drawn
from its own generator seeded with ``sample_seed(s, k)``, so it is the same image whatever the batch size.

Class-conditional runs (``run.config.class_names`` is not None): ``generate(run, n, labels=..., guidance=w)``
draws sample k of class ``labels[k]`` (again whatever the batch size), with classifier-free guidance of weight w
(:mod:`ddpm.core.guidance`: w = 0 purely conditional; the "guidance scale" of other libraries is 1 + w).
:func:`class_labels` builds the usual label lists (one class, classes in turn, one row per class).
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.guidance import check_guidance, check_interval, guided_model
from ..core.samplers import (
    DEFAULT_SPACING,
    Chain,
    OnStep,
    PerSampleNoise,
    ancestral_timesteps,
    run_sampler,
    steps_or_default,
)
from ..core.schedule import Schedule, make_schedule
from ..data.datasets import to_uint8
from ..model.cudagraph import GraphedNetwork
from ..model.unet import UNet
from ..runs.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    load_checkpoint,
    mismatch_summary,
    weight_set,
)
from ..runs.config import TrainConfig
from ..runs.images import (
    save_chain_gif,
    save_chain_strip,
    save_grid,
    save_individual,
    save_npz,
)
from ..runtime.atomic import write_json_atomic
from ..runtime.distributed import resolve_device
from ..runtime.governor import governor_for
from ..runtime.precision import SAMPLING_PRECISIONS, autocast_dtype, check_precision
from .variance import ANALYTIC, analytic_sigma2

__all__ = ["LoadedRun", "Samples", "load_run", "sample_seed", "model_fn", "class_labels", "resolve_labels", "generate",
           "sample", "DEFAULT_GUIDANCE", "resolve_guidance",
           "SAMPLING_SETTINGS", "default_samples_dir", "sampling_record"]

#: the guidance weight w of :func:`generate` and ``ddpm sample`` when classes are asked for and no w is given: on the
#: digits, w = 1 draws the digit asked for 99.0% (DDIM-50) to 99.8% (DDPM-100) of the time, against 88.4% and 95.2%
#: for w = 0, the purely conditional model (docs/conditional.md)
DEFAULT_GUIDANCE = 1.0


@dataclass
class LoadedRun:
    """A run ready to sample: the network (eval mode, on ``device``), its schedule and config, and which checkpoint
    and weights it came from.  ``config.class_names`` says whether the run is class-conditional (None: not)."""

    model: torch.nn.Module
    schedule: Schedule
    config: TrainConfig
    checkpoint: Path
    device: torch.device
    weights: str = "ema"
    #: what is computed once per loaded run and reused by later calls (Analytic-DPM's variances)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The classes a conditional run draws (label k is ``class_names[k]``); None for an unconditional run."""
        return self.config.class_names


def load_run(path, which: str = "ema", device: str = "auto") -> LoadedRun:
    """Build the network of a run (or checkpoint) folder from its saved config and load ``ema`` or ``model`` weights,
    or ``ema:D``, the EMA of decay D of a run trained with several (:func:`ddpm.runs.checkpoint.weight_set`)."""
    if which not in ("ema", "model") and not str(which).startswith("ema:"):
        raise ValueError(f"weights must be 'ema', 'model' or 'ema:DECAY', got {which!r}")
    try:
        ck = load_checkpoint(path, with_trainer_state=False)
    except CheckpointError as e:  # a damaged newest checkpoint: name the next one rather than pick it silently
        older = complete_checkpoints(Path(path))[1:2] if Path(path).is_dir() else []
        if older:
            raise CheckpointError(f"{e}; the older {older[0]} may be intact: pass that folder instead") from None
        raise
    try:
        config = TrainConfig.from_dict(ck["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ck['path'] / 'config.json'}: not a valid ddpm config ({e})") from None
    dev = resolve_device(device)
    model = UNet(config.model)
    try:
        model.load_state_dict(weight_set(ck, which))
    except RuntimeError as e:
        raise CheckpointError(f"{ck['path']}: weights do not fit the saved config ({mismatch_summary(e)})") from None
    model = model.to(dev, memory_format=torch.channels_last).eval().requires_grad_(False)
    return LoadedRun(model, make_schedule(config.schedule), config, ck["path"], dev, which)


#: 2^32 / golden ratio, odd: spreads consecutive base seeds evenly over the 32-bit seed space
_SEED_STRIDE = 0x9E3779B9


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` in a call with base ``seed``: (seed * 0x9E3779B9 + index) mod 2^32.

    32 bits because torch's CPU generator keeps only the low 32 bits of a seed (so a seed laid out as
    ``seed << 32 | index`` would ignore ``seed``).  Base seeds count mod 2^32, and base seed 0 gives sample k
    the seed k.  Within a call the samples' seeds are distinct (up to 2^32 samples).  Two base seeds s != s'
    share a sample seed among their first n samples only when (s - s') * 0x9E3779B9 mod 2^32 falls within n
    of 0 or 2^32: probability about 2n / 2^32 for arbitrary seeds (5e-5 for n = 100,000), and never for
    nearby ones (base seeds less than 1,000 apart: not within the first 1.9 million samples; tested).
    """
    return (int(seed) * _SEED_STRIDE + int(index)) % 2**32


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The trainer's mapping (:func:`ddpm.runtime.precision.autocast_dtype`), limited to the sampling precisions."""
    return autocast_dtype(device, check_precision(precision, SAMPLING_PRECISIONS))


def model_fn(model: torch.nn.Module, device: torch.device, precision: str = "auto"):
    """Wrap a network as ``f(x, t, y=None)``: inputs in the channels_last layout (faster convolutions on CPU and GPU
    alike), outputs float32; ``y``, class labels, is passed on to a conditional network (None: not passed).
    precision: "auto" (bf16 autocast on CUDA, float32 elsewhere), "fp32" or "bf16" (autocast on any device; on a
    CPU with native bf16 it samples 1.2x faster, see docs/performance.md).  On the CPU each call first lets the
    thread governor (:mod:`ddpm.runtime.governor`) fit the thread count to the cores other programs leave free."""
    dtype = _autocast_dtype(device, precision)
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    threads = governor_for(device)

    def f(x, t, y=None):
        threads.tick()
        x = x.contiguous(memory_format=torch.channels_last)
        with ctx():
            return (model(x, t) if y is None else model(x, t, y)).float()
    return f


def class_labels(num_classes: int, n: int | None = None, *, classes=None, per_class: int | None = None) -> list[int]:
    """Per-sample labels for :func:`generate`: ``classes`` (an int, or a list taken in turn: sample k gets
    ``classes[k % len(classes)]``) for ``n`` samples; or, with ``per_class`` K, K samples of every class in order
    (0, 0, ..., 1, 1, ...), which a grid K images wide shows one class per row.  Neither: every class in turn."""
    if per_class is not None:
        if classes is not None or n is not None:
            raise ValueError("per_class gives the labels and their number; pass neither classes nor n with it")
        return [c for c in range(num_classes) for _ in range(per_class)]
    if n is None:
        raise ValueError("pass n, the number of samples, or per_class")
    if classes is None:
        classes = range(num_classes)
    classes = [classes] if isinstance(classes, int) else list(classes)
    if not classes:
        raise ValueError("classes is empty; name at least one class")
    return [int(classes[k % len(classes)]) for k in range(n)]


def resolve_guidance(labels, guidance: float | None) -> float:
    """The w a :func:`generate` call guides with: ``guidance`` when given, else :data:`DEFAULT_GUIDANCE` for a call
    with labels and 0 (nothing to guide towards) for one without."""
    if guidance is not None:
        return check_guidance(guidance)
    return DEFAULT_GUIDANCE if labels is not None else 0.0


def resolve_labels(run: LoadedRun, n: int, labels, guidance: float = 0.0) -> torch.Tensor | None:
    """The labels of a :func:`generate` call as an int64 (n,) tensor (None: unconditional), checked against the
    run: an int means every sample; a sequence or tensor gives sample k its own label.  ValueError for labels
    asked of an unconditional run, a label outside 0..K-1, the wrong count, or guidance without labels."""
    check_guidance(guidance)
    names = run.config.class_names
    if labels is None:
        if guidance != 0:
            raise ValueError(f"guidance {guidance} needs class labels to guide towards; pass labels")
        return None
    if names is None:
        raise ValueError(f"{run.checkpoint} is an unconditional run (trained without class labels) and draws no "
                         "chosen class; drop the labels, or train with class labels (ddpm train --class-cond)")
    y = torch.full((n,), labels, dtype=torch.long) if isinstance(labels, int) else torch.as_tensor(labels)
    if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be one class index per sample, {n} integers; got {y.dtype} {tuple(y.shape)}")
    y = y.to(torch.long).cpu()
    if n and (y.min() < 0 or y.max() >= len(names)):
        bad = int(y[(y < 0) | (y >= len(names))][0])
        raise ValueError(f"class label {bad} is outside this run's classes 0..{len(names) - 1} "
                         f"({', '.join(names)})")
    return y


@dataclass
class Samples:
    """What :func:`generate` draws: ``images``, uint8 (n, C, H, W); ``chain``, with ``chain_samples`` > 0, the
    denoising chain of the first that many samples as a list of (t, uint8 tensor) frames from x_T to x_0
    (t the paper's time, 0 for x_0), else None; ``labels``, the int64 (n,) class of each sample when classes were
    asked for, else None."""

    images: torch.Tensor
    chain: list[tuple[int, torch.Tensor]] | None = None
    labels: torch.Tensor | None = None


def generate(run: LoadedRun, n: int, *, seed: int = 0, batch_size: int = 64, sampler: str = "ddpm",
             steps: int | None = None, eta: float = 0.0, variance: str | None = None, clip_denoised: bool = True,
             progress: bool = True, chain_samples: int = 0, chain_every: int | None = None,
             cuda_graph: bool = False, precision: str = "auto", on_step: OnStep | None = None,
             labels=None, guidance: float | None = None, guidance_interval: tuple[int, int] | None = None,
             **sampler_kw) -> Samples:
    """Draw ``n`` samples; returns :class:`Samples` (the uint8 images, and the chain of the first
    ``chain_samples`` of them, one frame every ``chain_every`` steps, by default a tenth of the steps).
    ``variance``: sigma_t^2 of the "ddpm" sampler: a variance type of :data:`ddpm.core.diffusion.VARIANCE_TYPES`,
    ``"analytic"`` (Analytic-DPM's, estimated once per loaded run from its training data: :mod:`.variance`), or None,
    the run's own.  The library's defaults are the paper's (all T steps, the run's variance); the commands' defaults
    are :func:`ddpm.sampling.defaults.resolve_sampling`'s.
    ``cuda_graph``: replay the network from CUDA graphs (:class:`ddpm.model.cudagraph.GraphedNetwork`; CUDA
    only).  ``precision``: see :func:`model_fn`.  ``on_step``: called with every batch's
    :class:`~ddpm.core.samplers.Step` (x_t and the predicted x_0 in the model's [-1, 1] range), e.g. to show
    the images forming.

    Class-conditional runs: ``labels``, an int (every sample of that class) or n class indices (sample k of class
    ``labels[k]``, whatever the batch size; :func:`class_labels` builds them), and ``guidance``, the weight w of
    classifier-free guidance, eps~ = (1 + w) eps(x, t, y) - w eps(x, t) (:mod:`ddpm.core.guidance`; w = 0 is
    purely conditional, w > 0 costs one forward pass of twice the batch per step; None: :data:`DEFAULT_GUIDANCE`
    with labels).  ``labels=None`` draws from
    the run's unconditional model.  The labels come back in ``Samples.labels``.  ``guidance_interval``: (lo, hi)
    in the paper's t (1..T): guide only those steps, the conditional pass alone elsewhere (Kynkäänniemi et al. 2024;
    the steps outside cost one pass of the batch); None guides every step."""
    cfg = run.config
    guidance = resolve_guidance(labels, guidance)
    y_all = resolve_labels(run, n, labels, guidance)
    interval = None
    if guidance_interval is not None:
        if not guidance:
            raise ValueError("a guidance interval needs a guidance weight w > 0 to apply in it")
        lo, hi = guidance_interval
        interval = check_interval((int(lo) - 1, int(hi) - 1), cfg.schedule.num_timesteps)  # 0-based indices
    shape = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    variance = variance or cfg.variance
    analytic = variance == ANALYTIC
    if analytic:
        if sampler != "ddpm":
            raise ValueError(f"the analytic variance sets Algorithm 2's sigma_t, for the ddpm sampler only, "
                             f"not {sampler!r}")
        variance = cfg.variance  # how to read the network's output
    if cuda_graph:
        if run.device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device, the run is loaded on {run.device}")
        f = GraphedNetwork(run.model, autocast_dtype=_autocast_dtype(run.device, precision))
    else:
        f = model_fn(run.model, run.device, precision)
    guide = None if y_all is None else (guidance, interval)
    sigma2 = analytic_sigma2(run, ancestral_timesteps(run.schedule, steps, sampler_kw.get("spacing")),
                             model=f, guide=guide) if analytic else None
    out, chains = [], []
    bar = tqdm(total=n, desc="images", unit="img", dynamic_ncols=True) if progress and n > batch_size else None
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        noise = PerSampleNoise([sample_seed(seed, k) for k in idx], run.device)
        model = f if y_all is None else guided_model(f, y_all[start:start + len(idx)].to(run.device), guidance,
                                                     null_label=cfg.model.num_classes,
                                                     eps_channels=cfg.model.in_channels, interval=interval)
        observers = [on_step] if on_step is not None else []
        if start < chain_samples:  # the chain's samples may span several batches
            chains.append(Chain(chain_every or max(1, (steps or cfg.schedule.num_timesteps) // 10),
                                first=chain_samples - start))
            observers.append(chains[-1])
        x = run_sampler(model, run.schedule, noise, shape, sampler=sampler, steps=steps, eta=eta, variance=variance,
                        clip_denoised=clip_denoised, progress=progress and bar is None,
                        on_step=_all_of(observers), sigma2=sigma2, **sampler_kw)
        out.append(to_uint8(x.clamp(-1, 1)).cpu())
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    frames = None
    if chains:
        frames = [(t, to_uint8(torch.cat([c.frames[i][1] for c in chains]).clamp(-1, 1)))
                  for i, (t, _) in enumerate(chains[0].frames)]
    return Samples(torch.cat(out), frames, y_all)


def _all_of(observers: list) -> OnStep | None:
    """One ``on_step`` that calls each observer in turn (None when there is none)."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def each(step):
        for observe in observers:
            observe(step)
    return each


#: the keyword arguments of :func:`generate` that decide which images come out
SAMPLING_SETTINGS = ("seed", "sampler", "steps", "eta", "spacing", "variance", "clip_denoised", "precision", "labels",
                     "guidance", "guidance_interval")


def sampling_record(run: LoadedRun, n: int, kw: dict) -> dict:
    """What ``samples.json`` says of a :func:`sample` call: the checkpoint and weights, ``n``, and every setting
    that decides the images (defaults filled in), so that the samples can be drawn again."""
    defaults = {k: p.default for k, p in inspect.signature(generate).parameters.items() if k in SAMPLING_SETTINGS}
    settings = {**defaults, **{k: kw[k] for k in SAMPLING_SETTINGS if k in kw}}
    sampler = settings["sampler"]
    steps = steps_or_default(sampler, settings.get("steps"))
    settings["steps"] = run.schedule.num_timesteps if steps is None else steps
    settings["spacing"] = settings.get("spacing") or DEFAULT_SPACING[sampler]
    settings["variance"] = settings.get("variance") or run.config.variance
    # "auto" means bf16 on CUDA, and CUDA generators draw other noise than CPU ones: record what it was here
    settings["precision"] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
        _autocast_dtype(run.device, settings["precision"])]
    settings["guidance"] = resolve_guidance(settings["labels"], settings["guidance"])
    labels = resolve_labels(run, n, settings["labels"], settings["guidance"])
    settings["labels"] = None if labels is None else labels.tolist()  # one per sample: the same images again
    settings["guidance"] = float(settings["guidance"])
    if settings["guidance_interval"] is not None:
        settings["guidance_interval"] = [int(v) for v in settings["guidance_interval"]]
    return {"checkpoint": str(Path(run.checkpoint).resolve()), "weights": run.weights, "device": run.device.type,
            "n": n, **settings}


def default_samples_dir(run: LoadedRun, sampler: str) -> Path:
    """Where :func:`sample` writes by default: ``RUN/samples/<sampler>`` of the run the checkpoint belongs to, or
    ``FOLDER/samples/<sampler>`` for a checkpoint folder outside ``RUN/checkpoints`` (one ``ddpm ema`` wrote)."""
    ckpt = Path(run.checkpoint)
    return (ckpt.parent.parent if ckpt.name.startswith("step_") else ckpt) / "samples" / sampler


def sample(run, n: int = 64, out_dir=None, *, which: str = "ema", device: str = "auto", individual: bool = True,
           chain_samples: int = 0, grid_width: int | None = None, **kw) -> Path:
    """Sample ``n`` images from a run folder and write ``grid.png`` (``grid_width`` images a row; default near
    square), ``samples.npz`` (uint8 N x H x W x C under "images"; with class labels, their int64 (N,) indices under
    "labels"), one PNG per sample under ``images/``, and with ``chain_samples`` the chain strip PNG and GIF.
    ``kw`` goes to :func:`generate` (``labels=``, ``guidance=`` for a class-conditional run).
    Returns the output folder (default ``RUN/samples/<sampler>``).  What an earlier call wrote there (its
    ``images/sample_*.png``, its chain, a ``samples_quality.json`` of its samples) is replaced, so the folder never
    mixes two calls' samples; other files are left alone.  ``samples.json`` records the checkpoint and settings."""

    loaded = run if isinstance(run, LoadedRun) else load_run(run, which=which, device=device)
    out = Path(out_dir) if out_dir else default_samples_dir(loaded, kw.get("sampler", "ddpm"))
    drawn = generate(loaded, n, chain_samples=chain_samples, **kw)
    images, chain = drawn.images, drawn.chain
    out.mkdir(parents=True, exist_ok=True)
    # an earlier call's images, chain and quality report (of those images) would describe other samples
    for stale in [*(out / "images").glob("sample_*.png"), out / "chain.png", out / "chain.gif",
                  out / "samples_quality.json"]:
        stale.unlink(missing_ok=True)
    write_json_atomic(out / "samples.json", sampling_record(loaded, n, kw))
    save_grid(out / "grid.png", images, nrow=grid_width)
    save_npz(out / "samples.npz", images, labels=drawn.labels)
    if individual:
        save_individual(out / "images", images)
    if chain:
        save_chain_strip(out / "chain.png", chain)
        save_chain_gif(out / "chain.gif", chain)
    return out
