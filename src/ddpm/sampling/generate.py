"""Sampling from a trained run: load the weights, run a sampler, write the pictures.

``sample(run, n)`` is the Python twin of ``ddpm sample``.  Sample k of a call with base seed s is drawn
from its own generator seeded with ``sample_seed(s, k)``, so it is the same image whatever the batch size.

How to draw is one :class:`~ddpm.sampling.config.SamplingConfig` (sampler, steps, spacing, variance, eta,
guidance); ``generate(run, n)`` with none draws what ``ddpm sample RUN -n n`` draws.  Class-conditional runs
(``run.config.class_names`` is not None): ``generate(run, n, labels=...)`` draws sample k of class ``labels[k]``
(again whatever the batch size), with classifier-free guidance of the config's weight w (:mod:`ddpm.core.guidance`:
w = 0 purely conditional; the "guidance scale" of other libraries is 1 + w); no labels draws every class in turn,
``labels="none"`` the run's "no class" model.  :func:`~ddpm.sampling.defaults.class_labels` builds the usual label
lists (one class, classes in turn, one row per class).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.guidance import check_interval, guided_model
from ..core.samplers import Chain, OnStep, PerSampleNoise, ancestral_timesteps, run_sampler
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
from .config import NO_CLASS, SamplingConfig, parse_class
from .defaults import DEFAULT_GUIDANCE, class_labels, resolve_guidance  # noqa: F401  (re-exported: older imports)
from .variance import ANALYTIC, analytic_sigma2

__all__ = ["LoadedRun", "Samples", "load_run", "sample_seed", "model_fn", "resolve_labels", "generate", "sample",
           "sampling_config", "sampling_record", "default_samples_dir"]


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
            return model(x, t, y).float()
    return f


def resolve_labels(run: LoadedRun, n: int, labels) -> torch.Tensor | None:
    """The labels of a :func:`generate` call as an int64 (n,) tensor, checked against the run (None: drawn without
    a class).  None: every class in turn on a class-conditional run (the default), nothing on an unconditional one;
    ``"none"``: the "no class" model; an int or class name: every sample; a sequence or tensor: sample k its own
    label (names or indices, :func:`~ddpm.sampling.config.parse_class`).  ValueError for labels asked of an
    unconditional run, a class the run does not have, or the wrong count."""
    names = run.config.class_names
    if isinstance(labels, str) and labels == NO_CLASS:
        return None
    if labels is None:
        return None if names is None else torch.tensor(class_labels(len(names), n), dtype=torch.long)
    if names is None:
        raise ValueError(f"{run.checkpoint} is an unconditional run (trained without class labels) and draws no "
                         "chosen class; drop the labels, or train with class labels (ddpm train --class-cond)")
    if isinstance(labels, (int, str)):
        labels = [labels] * n
    if not isinstance(labels, torch.Tensor):
        labels = [parse_class(names, v) if isinstance(v, str) else v for v in labels]
    y = torch.as_tensor(labels)
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
    (t the paper's time, 0 for x_0), else None; ``labels``, the int64 (n,) class of each sample of a class-conditional
    run (None: drawn without a class); ``sampling``, the concrete :class:`SamplingConfig` they were drawn with."""

    images: torch.Tensor
    chain: list[tuple[int, torch.Tensor]] | None = None
    labels: torch.Tensor | None = None
    sampling: SamplingConfig | None = None


def sampling_config(sampling: SamplingConfig | None = None, **settings) -> SamplingConfig:
    """``sampling``, or a :class:`SamplingConfig` built from the keywords of its fields (``sampler="ddim",
    steps=50``, as :func:`generate` took them before the config existed), or the default; TypeError for both, or a
    keyword that is not a field."""
    names = {f.name for f in fields(SamplingConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; how to draw is a SamplingConfig of "
                        f"{', '.join(sorted(names))}")
    if sampling is not None and settings:
        raise TypeError(f"pass either a SamplingConfig or its fields ({', '.join(settings)}), not both")
    return sampling if sampling is not None else SamplingConfig(**settings)


def generate(run: LoadedRun, n: int, sampling: SamplingConfig | None = None, *, seed: int = 0, batch_size: int = 64,
             labels=None, chain_samples: int = 0, chain_every: int | None = None, progress: bool = True,
             cuda_graph: bool = False, precision: str = "auto", on_step: OnStep | None = None,
             sigma_scale: float = 1.0, **settings) -> Samples:
    """Draw ``n`` samples of ``run`` as ``sampling`` says (None: the default, what ``ddpm sample`` draws; or its
    fields as keywords, ``sampler="ddim", steps=50``); returns :class:`Samples` (the uint8 images, the chain of the
    first ``chain_samples`` of them, one frame every ``chain_every`` steps, by default a tenth of the steps, and
    the concrete config).  ``labels``: see :func:`resolve_labels` (None: every class in turn on a class-conditional
    run; guided with w = 1 unless the config says otherwise when classes are asked for).  ``cuda_graph``: replay the
    network from CUDA graphs (:class:`ddpm.model.cudagraph.GraphedNetwork`; CUDA only).  ``precision``: see
    :func:`model_fn`.  ``on_step``: called with every batch's :class:`~ddpm.core.samplers.Step` (x_t and the
    predicted x_0 in the model's [-1, 1] range), e.g. to show the images forming.  ``sigma_scale``: a factor on
    Algorithm 2's sigma_t (0: the mean-only path of the noise study)."""
    y_all = resolve_labels(run, n, labels)
    asked = labels is not None and not (isinstance(labels, str) and labels == NO_CLASS)
    concrete = sampling_config(sampling, **settings).for_run(run, classes_asked=asked)
    if y_all is None and concrete.guidance:
        raise ValueError(f"guidance {concrete.guidance:g} needs class labels to guide towards; pass labels")
    cfg = run.config
    interval = None if concrete.guidance_interval is None else check_interval(
        tuple(v - 1 for v in concrete.guidance_interval), cfg.schedule.num_timesteps)  # 0-based indices
    f = _network(run, cuda_graph, precision)
    read = cfg.variance if concrete.variance in (None, ANALYTIC) else concrete.variance  # how to read its output
    if cfg.variance == "learned-range" != read:  # a fixed variance asked of a network that learned one: its eps half
        f = _eps_half(f, cfg.model.in_channels)
    guide = None if y_all is None else (concrete.guidance, interval)
    analytic = concrete.variance == ANALYTIC
    sigma2 = analytic_sigma2(run, ancestral_timesteps(run.schedule, concrete.steps, concrete.spacing), model=f,
                             guide=guide) if analytic else None
    shape = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    kw = dict(sampler=concrete.sampler, steps=concrete.steps, eta=concrete.eta, spacing=concrete.spacing,
              variance=read,
              clip_denoised=concrete.clip_denoised, sigma2=sigma2, sigma_scale=sigma_scale)
    out, chains = [], []
    bar = tqdm(total=n, desc="images", unit="img", dynamic_ncols=True) if progress and n > batch_size else None
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        noise = PerSampleNoise([sample_seed(seed, k) for k in idx], run.device)
        model = (lambda x, t: f(x, t, None)) if y_all is None else guided_model(
            f, y_all[start:start + len(idx)].to(run.device), concrete.guidance, null_label=cfg.model.num_classes,
            eps_channels=cfg.model.in_channels, interval=interval)
        observers = [on_step] if on_step is not None else []
        if start < chain_samples:  # the chain's samples may span several batches
            chains.append(Chain(chain_every or max(1, concrete.steps // 10), first=chain_samples - start))
            observers.append(chains[-1])
        x = run_sampler(model, run.schedule, noise, shape, progress=progress and bar is None,
                        on_step=_all_of(observers), **kw)
        out.append(to_uint8(x.clamp(-1, 1)).cpu())
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    frames = None
    if chains:
        frames = [(t, to_uint8(torch.cat([c.frames[i][1] for c in chains]).clamp(-1, 1)))
                  for i, (t, _) in enumerate(chains[0].frames)]
    return Samples(torch.cat(out), frames, y_all, concrete)


def _eps_half(f, channels: int):
    """The network ``f`` with the v half of a learned-range output dropped, for a fixed variance."""
    return lambda x, t, y=None: f(x, t, y)[:, :channels]


def _network(run: LoadedRun, cuda_graph: bool, precision: str):
    """The network as ``f(x, t, y)``: :func:`model_fn`, or replayed from CUDA graphs."""
    if not cuda_graph:
        return model_fn(run.model, run.device, precision)
    if run.device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, the run is loaded on {run.device}")
    return GraphedNetwork(run.model, autocast_dtype=_autocast_dtype(run.device, precision))


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


def sampling_record(run: LoadedRun, drawn: Samples, seed: int, precision: str) -> dict:
    """What ``samples.json`` says of a :func:`sample` call: the checkpoint and weights, ``n``, the seed, the concrete
    :class:`SamplingConfig` (``dataclasses.asdict``), the precision and every sample's label, so that the samples
    can be drawn again (``generate(run, n, SamplingConfig(**config fields), seed=, precision=, labels=)``)."""
    # "auto" means bf16 on CUDA, and CUDA generators draw other noise than CPU ones: record what it was here
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[_autocast_dtype(run.device, precision)]
    labels = None if drawn.labels is None else drawn.labels.tolist()  # one per sample: the same images again
    return {"checkpoint": str(Path(run.checkpoint).resolve()), "weights": run.weights, "device": run.device.type,
            "n": len(drawn.images), "seed": int(seed), **asdict(drawn.sampling), "precision": precision,
            "labels": labels}


def default_samples_dir(run: LoadedRun, sampler: str) -> Path:
    """Where :func:`sample` writes by default: ``RUN/samples/<sampler>`` of the run the checkpoint belongs to, or
    ``FOLDER/samples/<sampler>`` for a checkpoint folder outside ``RUN/checkpoints`` (one ``ddpm ema`` wrote)."""
    ckpt = Path(run.checkpoint)
    return (ckpt.parent.parent if ckpt.name.startswith("step_") else ckpt) / "samples" / sampler


def sample(run, n: int = 64, out_dir=None, sampling: SamplingConfig | None = None, *, which: str = "ema",
           device: str = "auto", individual: bool = True, chain_samples: int = 0, grid_width: int | None = None,
           **kw) -> Path:
    """Sample ``n`` images from a run folder and write ``grid.png`` (``grid_width`` images a row; default near
    square), ``samples.npz`` (uint8 N x H x W x C under "images"; with class labels, their int64 (N,) indices under
    "labels"), one PNG per sample under ``images/``, and with ``chain_samples`` the chain strip PNG and GIF.
    ``sampling`` and ``kw`` go to :func:`generate` (``seed=``, ``labels=``; or the config's fields as keywords).
    Returns the output folder (default ``RUN/samples/<sampler>``).  What an earlier call wrote there (its
    ``images/sample_*.png``, its chain, a ``samples_quality.json`` of its samples) is replaced, so the folder never
    mixes two calls' samples; other files are left alone.  ``samples.json`` records the checkpoint and settings."""

    loaded = run if isinstance(run, LoadedRun) else load_run(run, which=which, device=device)
    settings = {k: kw.pop(k) for k in [k for k in kw if k in {f.name for f in fields(SamplingConfig)}]}
    sampling = sampling_config(sampling, **settings)
    out = Path(out_dir) if out_dir else default_samples_dir(loaded, sampling.sampler)
    drawn = generate(loaded, n, sampling, chain_samples=chain_samples, **kw)
    images, chain = drawn.images, drawn.chain
    out.mkdir(parents=True, exist_ok=True)
    # an earlier call's images, chain and quality report (of those images) would describe other samples
    for stale in [*(out / "images").glob("sample_*.png"), out / "chain.png", out / "chain.gif",
                  out / "samples_quality.json"]:
        stale.unlink(missing_ok=True)
    write_json_atomic(out / "samples.json", sampling_record(loaded, drawn, kw.get("seed", 0),
                                                            kw.get("precision", "auto")))
    save_grid(out / "grid.png", images, nrow=grid_width)
    save_npz(out / "samples.npz", images, labels=drawn.labels)
    if individual:
        save_individual(out / "images", images)
    if chain:
        save_chain_strip(out / "chain.png", chain)
        save_chain_gif(out / "chain.gif", chain)
    return out
