"""Evaluation runners behind ``ddpm eval nll`` and ``ddpm eval quality``.

They take objects that are already loaded (a noise predictor, its schedule, uint8 images), write their
results as JSON (and a plot) into an output folder, and return the same results as a dict; the ``*_summary``
functions turn those dicts into a few lines for the terminal.  No argument parsing here.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.likelihood import calc_bpd_full, calc_bpd_quick
from ..core.schedule import Schedule
from ..data.datasets import DataConfig, load_images, to_model_range
from ..data.files import LABEL_KEYS, native_shape
from ..runs.images import atomic_write_path
from ..runtime.atomic import write_json_atomic
from .quality import ClassifierRecipe, format_quality, quality_report

__all__ = ["run_nll", "nll_summary", "plot_nll_terms", "run_quality", "quality_summary", "load_samples",
           "load_sample_labels"]


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std() / math.sqrt(len(x))) if len(x) > 1 else math.nan


def run_nll(model, schedule: Schedule, x0_uint8: torch.Tensor, out_dir, *, variance: str = "fixed-large",
            quick_k: int | None = None, spacing: str = "log", batch_size: int = 64, seed: int = 0,
            device: torch.device | str = "cpu", progress: bool = False, labels: torch.Tensor | None = None) -> dict:
    """Bits/dim of uint8 images (N, C, H, W) under the bound of Ho et al. 2020, eq. 5.

    model(x_t, t) -> output in float32 (use full precision: the bound's small terms need it).
    quick_k None: the full sum over all T timesteps (:func:`ddpm.core.likelihood.calc_bpd_full`, T forward passes
    per batch); an integer k: the stratified estimate from k + 1 passes (:func:`~ddpm.core.likelihood.calc_bpd_quick`).
    Writes ``nll.json`` and ``nll_terms.png`` (L_{t-1} against t) into ``out_dir``; returns the JSON dict.
    ``bpd_stderr`` is the standard error of the mean over images (image-to-image spread and Monte Carlo
    noise together, the images being independent).  ``labels``: the images' (N,) class labels, for the bound on
    -log p(x | y) of a class-conditional model, called as model(x_t, t, y) (``class_cond`` in the JSON).
    """
    out_dir = Path(out_dir)
    x0 = to_model_range(x0_uint8, device)
    g = torch.Generator(device=x0.device).manual_seed(seed)
    start = time.perf_counter()
    result = {"mode": "full" if quick_k is None else "quick", "num_images": int(x0.shape[0]),
              "dims_per_image": int(x0[0].numel()), "num_timesteps": schedule.num_timesteps, "variance": variance,
              "seed": seed, "class_cond": labels is not None}
    if quick_k is None:
        r = calc_bpd_full(model, schedule, x0, generator=g, variance=variance, batch_size=batch_size,
                          progress=progress, labels=labels)
        terms_mean = r.terms.mean(0)
        result.update({
            "decoder_bpd": float(r.terms[:, 0].mean()), "kl_bpd": float(r.terms[:, 1:].sum(1).mean()),
            "terms_mean_bpd": terms_mean.tolist(), "eps_mse_mean": r.eps_mse.mean(0).tolist(),
            "x0_mse_mean": r.x0_mse.mean(0).tolist(),
        })
        plot_nll_terms(out_dir / "nll_terms.png", torch.arange(1, schedule.num_timesteps + 1), terms_mean,
                       title=f"L_(t-1) per timestep, mean of {x0.shape[0]} images, {variance}")
    else:
        r = calc_bpd_quick(model, schedule, x0, quick_k, generator=g, variance=variance, spacing=spacing,
                           batch_size=batch_size, progress=progress, labels=labels)
        result.update({
            "k": quick_k, "spacing": spacing, "decoder_bpd": float(r.decoder_bpd.mean()),
            "kl_bpd": float((r.terms * r.stratum_sizes.double()).sum(1).mean()),
            "per_image_stderr_mean": float(r.stderr.pow(2).mean().sqrt()),
            "strata": [int(b) for b in torch.cumsum(torch.cat([torch.ones(1, dtype=torch.long), r.stratum_sizes]), 0)],
        })
        t = torch.cat([torch.zeros(len(r.decoder_bpd), dtype=torch.long)[:, None], r.t], 1) + 1
        vals = torch.cat([r.decoder_bpd[:, None], r.terms], 1)
        plot_nll_terms(out_dir / "nll_terms.png", t.flatten(), vals.flatten(), scatter=True,
                       title=f"sampled L_(t-1), {x0.shape[0]} images x {quick_k + 1} timesteps, {variance}")
    bpd, se = _mean_se(r.total_bpd)
    result.update({"bpd": bpd, "bpd_stderr": se, "prior_bpd": float(r.prior_bpd.mean()),
                   "per_image_bpd": r.total_bpd.tolist(), "elapsed_s": round(time.perf_counter() - start, 3)})
    write_json_atomic(out_dir / "nll.json", result)
    return result


def plot_nll_terms(path, t: torch.Tensor, values: torch.Tensor, *, title: str = "", scatter: bool = False) -> Path:
    """L_{t-1} in bits/dim against the paper's t = 1..T on a log y-axis, written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    t, values = t.double().cpu(), values.double().cpu()
    keep = values > 0          # a log axis cannot show zeros (or tiny negative Monte Carlo draws)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if scatter:
        ax.scatter(t[keep], values[keep], s=4, alpha=0.4)
    else:
        ax.plot(t[keep], values[keep], lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("t (paper's 1-based timestep; t = 1 is the decoder term L_0)")
    ax.set_ylabel("bits / dim")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def nll_summary(result: dict) -> str:
    """A few lines for the terminal."""
    how = "all T terms" if result["mode"] == "full" else f"{result['k']} {result['spacing']} strata + L_0"
    what = "-log p(x | y)" if result.get("class_cond") else "NLL"
    return "\n".join([
        f"{what} bound {result['bpd']:.4f} +- {result['bpd_stderr']:.4f} bits/dim  "
        f"({result['num_images']} images, T = {result['num_timesteps']}, {how}, variance {result['variance']})",
        f"  L_0 (decoder) {result['decoder_bpd']:.4f}   sum of KL terms {result['kl_bpd']:.4f}   "
        f"L_T (prior) {result['prior_bpd']:.2e}   ({result['elapsed_s']:.1f} s)",
    ])


def run_quality(images_uint8, out_dir, *, reference="test", cache=None, recipe: ClassifierRecipe = ClassifierRecipe(),
                kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0, floor: bool = True,
                classifier=None, name: str = "quality.json", labels=None) -> dict:
    """Classifier FD, KID and class histogram of generated digits (:func:`ddpm.evaluation.quality.quality_report`),
    with the conditional accuracy when ``labels`` (the digit each was drawn as) are given; writes it as ``name``
    (default ``quality.json``) into ``out_dir`` and returns the dict."""
    report = quality_report(images_uint8, reference, classifier=classifier, cache=cache, recipe=recipe,
                            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed, floor=floor,
                            labels=labels)
    write_json_atomic(Path(out_dir) / name, report)
    return report


def quality_summary(report: dict) -> str:
    return format_quality(report)


def load_samples(path, image_size: int | None = 32, channels: int | None = 1) -> torch.Tensor:
    """Generated images saved by ``ddpm sample`` (``samples.npz``, any .npy/.npz, or a folder of PNGs) as a
    uint8 (N, channels, image_size, image_size) tensor, read by :func:`ddpm.data.datasets.load_images`.  The defaults
    give the grey 32x32 digits of the quality yardstick; None keeps what the file holds (for Inception FID)."""

    if image_size is None or channels is None:
        c, s = native_shape(path)
        image_size, channels = image_size or s, channels or c
    with warnings.catch_warnings():  # resizing to the yardstick's 32x32 is the point here, not a training hazard
        warnings.filterwarnings("ignore", message=".*were enlarged")
        return load_images(DataConfig(source=str(path), image_size=image_size, channels=channels, split="all"))


def load_sample_labels(path) -> torch.Tensor | None:
    """The class labels saved beside generated images (``samples.npz`` of a class-conditional run: its "labels"
    array, or "y"), int64 (N,); None for a folder, a .npy or an .npz without labels."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".npz"):
        return None
    with np.load(path, allow_pickle=False) as f:
        key = next((k for k in LABEL_KEYS if k in f.files), None)
        return None if key is None else torch.from_numpy(np.asarray(f[key]).astype(np.int64))
