"""Sample quality seen from the pixels, not from a classifier: stroke statistics and a Frechet distance on a
pixel-space PCA.

The classifier's features are trained to tell digits apart, so they may not see what makes a drawn digit look
unlike a real one while still being the right digit: strokes that are too heavy, too thin, too many grey pixels.
These measures look at the ink itself, on the images as the classifier reads them (grey, 32 x 32, in [-1, 1]):

* ``mean_pixel``: the mean intensity on 0..255 (the ink mass of a white-on-black digit);
* ``ink_share``: the share of pixels above mid-grey (128 of 255);
* ``stroke_width``: 2 A / P of the ink (A its pixel count, P the number of ink/background edges between
  4-neighbours): a stroke of width w and length L has A = w L and P = 2 (w + L), so 2 A / P = w L / (w + L), which
  tends to w for long strokes;
* ``pixel_fd``: the Frechet distance of Gaussians fitted to the images projected on the first
  :data:`PCA_COMPONENTS` principal axes of the reference images (mean and spread of whole images).

Each is reported with the generated set's value, the reference's, and their difference; the real-data floor of
:func:`ddpm.evaluation.quality.real_floor` measures real digits the same way.
"""
from __future__ import annotations

import torch

__all__ = ["PCA_COMPONENTS", "INK_LEVEL", "stroke_stats", "pca_basis", "pca_features", "pixel_report"]

#: the principal axes of the pixel-space FD (the digits' first 32 axes hold most of their pixel variance)
PCA_COMPONENTS = 32
#: the intensity (0..255) above which a pixel counts as ink
INK_LEVEL = 128


def _intensity(x: torch.Tensor) -> torch.Tensor:
    """Prepared images in [-1, 1] -> grey intensities 0..255, float64 (N, H, W)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return ((x.mean(1) if x.ndim == 4 else x) + 1.0) * 127.5


def stroke_stats(x: torch.Tensor) -> dict:
    """Mean pixel, ink share and stroke width (see the module docstring) of prepared images (N, 1, H, W), each
    as the mean over images and its standard deviation (``*_std``)."""
    v = _intensity(x)
    ink = v > INK_LEVEL
    area = ink.sum((1, 2)).double()
    edges = (ink[:, 1:, :] != ink[:, :-1, :]).sum((1, 2)) + (ink[:, :, 1:] != ink[:, :, :-1]).sum((1, 2))
    edges = edges + ink[:, 0, :].sum(1) + ink[:, -1, :].sum(1) + ink[:, :, 0].sum(1) + ink[:, :, -1].sum(1)
    width = torch.where(edges > 0, 2 * area / edges.clamp(min=1).double(), torch.zeros_like(area))
    per_image = {"mean_pixel": v.mean((1, 2)), "ink_share": ink.double().mean((1, 2)), "stroke_width": width}
    out = {}
    for name, values in per_image.items():
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std()) if len(values) > 1 else 0.0
    return out


def pca_basis(reference: torch.Tensor, components: int = PCA_COMPONENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), the first ``components`` principal axes (D, components)) of the flattened reference images
    (fewer axes where the reference has no more than ``components`` images)."""
    flat = _intensity(reference).flatten(1) / 255.0
    if len(flat) < 2:
        raise ValueError(f"a pixel PCA needs at least 2 reference images, got {len(flat)}")
    components = min(components, len(flat) - 1)  # a small reference spans fewer axes
    mean = flat.mean(0)
    _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    return mean, vh[:components].T


def pca_features(images: torch.Tensor, reference: torch.Tensor,
                 components: int = PCA_COMPONENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, reference) projected on the reference's first ``components`` pixel axes: the features of the
    pixel-space Frechet distance."""
    mean, axes = pca_basis(reference, components)
    return tuple((_intensity(x).flatten(1) / 255.0 - mean) @ axes for x in (images, reference))


def pixel_report(images: torch.Tensor, reference: torch.Tensor, frechet) -> dict:
    """The pixel measures of prepared images against a prepared reference, JSON-ready; ``frechet(f1, f2)`` is the
    Frechet distance of two feature sets (:func:`ddpm.evaluation.quality.fd_from_features`)."""
    features = pca_features(images, reference)
    return {"pixel_fd": frechet(*features), "pca_components": int(features[0].shape[1]),
            "strokes": stroke_stats(images), "reference_strokes": stroke_stats(reference)}
