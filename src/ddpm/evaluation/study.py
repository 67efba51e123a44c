"""Why sampling adds noise (section 4 of the lecture notes).

Algorithm 2 adds sigma_t z at every step but the last.  One might think the "most likely" path, taking the
mean mu_theta(x_t, t) at every step (sigma_t = 0 for t > 1), should give the best images.  It does not: each
mean step is a denoiser's average over all images compatible with x_t, so taking means over and over
removes the variation the reverse process needs; the samples come out smooth, faint and alike.

:func:`noise_study` draws what ``ddpm sample`` draws (:class:`ddpm.SamplingConfig`'s default: on a class-conditional
run every class in turn, on the default's steps) from the same x_T (and the same z draws) in several ways:

* the default's own sigma_t (Analytic-DPM's, where its estimate is at hand),
* ``sigma^2 = beta_t``      (fixed-large, the paper's choice for CIFAR-10),
* ``sigma^2 = beta~_t``     (fixed-small, the posterior variance of eq. 7),
* ``sigma = 0`` for t > 1   (the mean-only path),

and reports per-image pixel variance (how much contrast a sample has) and, for digits, the classifier
Frechet distance to real test images.  A run trained with a learned variance (``learned-range``) is sampled the
same three ways from the eps half of its output, and a fourth way with its learned sigma_t.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..runs.images import atomic_write_path, make_grid
from ..runtime.atomic import write_json_atomic
from ..sampling.config import SamplingConfig
from ..sampling.generate import generate, load_run
from .quality import quality_report

__all__ = ["NOISE_VARIANTS", "LEARNED_VARIANT", "noise_study", "measures_quality", "pixel_variance"]

#: name -> (variance type, sigma scale)
NOISE_VARIANTS = {
    "sigma^2 = beta_t": ("fixed-large", 1.0),
    "sigma^2 = beta~_t": ("fixed-small", 1.0),
    "sigma = 0 (mean only)": ("fixed-large", 0.0),
}
#: the extra variant of a run that learned its variance (Nichol & Dhariwal 2021, eq. 15)
LEARNED_VARIANT = {"sigma^2 learned": ("learned-range", 1.0)}


def pixel_variance(images_uint8: torch.Tensor) -> torch.Tensor:
    """Variance of the pixel values within each image, on the [0, 1] scale; shape (N,)."""
    x = images_uint8.float().flatten(1) / 255.0
    return x.var(dim=1)


def noise_study(run, out_dir, *, n: int = 64, seed: int = 0, batch_size: int = 64, quality: bool = True,
                progress: bool = True, sampling: SamplingConfig | None = None) -> dict:
    """Sample ``run`` as ``sampling`` says (None: the default, what ``ddpm sample`` draws) with its own sigma_t and
    with each of :data:`NOISE_VARIANTS` from identical noise, write ``noise_study.png`` (the grids side by side) and
    ``noise_study.json``, and return the numbers."""
    loaded = load_run(run) if not hasattr(run, "model") else run
    cfg = loaded.config
    base = replace((sampling or SamplingConfig()).for_run(loaded), sampler="ddpm")
    variants = {**NOISE_VARIANTS, **LEARNED_VARIANT} if cfg.variance == "learned-range" else dict(NOISE_VARIANTS)
    if base.variance not in {v for v, _ in variants.values()}:
        variants = {f"sigma^2 {base.variance} (ddpm sample's)": (base.variance, 1.0), **variants}
    results, grids = {}, {}
    for name, (variance, scale) in variants.items():
        images = generate(loaded, n, replace(base, variance=variance), seed=seed, batch_size=batch_size,
                          progress=progress, sigma_scale=scale).images
        var = pixel_variance(images)
        row = {"variance": variance, "sigma_scale": scale, "steps": base.steps, "spacing": base.spacing,
               "pixel_variance_mean": float(var.mean()),
               "pixel_variance_std": float(var.std()) if len(var) > 1 else 0.0}
        if quality and measures_quality(cfg):
            q = quality_report(images, floor=False)
            row.update({"classifier_fd": q["fd"], "kid": q["kid_mean"],
                        "classes_present": q["classes"]["classes_present"]})
        results[name] = row
        grids[name] = images
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot(grids, results, out / "noise_study.png", make_grid)
    write_json_atomic(out / "noise_study.json", results)
    return results


def measures_quality(cfg) -> bool:
    """Whether the study adds the classifier FD for a run of this config: grey 32x32 embedded digits only."""
    m = cfg.model
    return cfg.data.source == "digits" and (m.in_channels, m.image_size) == (1, 32)


def _plot(grids, results, path, make_grid):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.8), dpi=110)
    for ax, (name, images) in zip(axes, grids.items()):
        ax.imshow(make_grid(images[:64]), cmap="gray" if images.shape[1] == 1 else None)
        r = results[name]
        sub = f"pixel var {r['pixel_variance_mean']:.4f}"
        if "classifier_fd" in r:
            sub += f", FD {r['classifier_fd']:.2f}"
        ax.set_title(f"{name}\n{sub}", fontsize=10)
        ax.axis("off")
    fig.suptitle("Same model, same x_T: Algorithm 2 with and without the sigma_t z term", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # leave the top strip to the suptitle
    with atomic_write_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
