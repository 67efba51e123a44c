"""Standard Inception FID through torch-fidelity (the optional ``fid`` extra), never a hand-written Inception.

torch-fidelity needs its Inception-v3 weights file; it normally downloads it once.  Where that cannot
happen (an offline machine), put the file at :func:`inception_weights_path` or point ``DDPM_INCEPTION_WEIGHTS``
at it; without it :func:`run_fid` raises :class:`FidUnavailable` with a one-line explanation.
For the embedded digits, ``ddpm eval quality`` gives an offline classifier FD instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.datasets import DataConfig, load_images

__all__ = ["FidUnavailable", "INCEPTION_WEIGHTS_FILE", "inception_weights_path", "run_fid", "check_fid_available"]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


class FidUnavailable(Exception):
    """FID cannot be computed here; the message says what is missing and how to get it."""


def inception_weights_path() -> Path:
    """Where the Inception weights are looked for: ``$DDPM_INCEPTION_WEIGHTS``, else torch's hub cache."""
    env = os.environ.get("DDPM_INCEPTION_WEIGHTS")
    if env:
        return Path(env)
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


class _UInt8RGB(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images as the 3 x H x W uint8 tensors torch-fidelity expects (grey repeated)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _reference_images(ref: str, like: torch.Tensor) -> torch.Tensor:

    size, channels = like.shape[-1], like.shape[1]
    if ref == "digits":
        return load_images(DataConfig(source="digits", image_size=size, channels=channels, split="test"))
    return load_images(DataConfig(source=ref, image_size=size, channels=channels, split="all"))


def check_fid_available(ref: str | None = None):
    """Import torch-fidelity and find the Inception weights (and ``ref``, when given), or raise
    :class:`FidUnavailable` saying what is missing: called before any sampling.  Returns the module."""
    try:
        import torch_fidelity
    except Exception as e:  # missing, or its torchvision dependency does not import beside this torch
        raise FidUnavailable(f"Inception FID needs torch-fidelity (pip install 'ddpm[fid]'); it could not be "
                             f"imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             "for digits use 'ddpm eval quality'") from None
    weights = inception_weights_path()
    if not weights.is_file():
        raise FidUnavailable(f"{weights}: Inception weights not found; FID needs them offline (copy "
                             f"{INCEPTION_WEIGHTS_FILE} there or set DDPM_INCEPTION_WEIGHTS); "
                             "for digits use 'ddpm eval quality'")
    if ref is not None and ref != "digits" and not Path(ref).exists():
        raise FidUnavailable(f"{ref}: no such reference folder or array file; pass real images or 'digits'")
    return torch_fidelity


def run_fid(images: torch.Tensor, ref: str) -> dict:
    """Inception FID between uint8 (N, C, H, W) ``images`` and the real images ``ref`` (a folder, an array file, or
    ``digits`` for the embedded test split)."""
    torch_fidelity = check_fid_available(ref)
    weights = inception_weights_path()
    real = _reference_images(ref, images)
    metrics = torch_fidelity.calculate_metrics(input1=_UInt8RGB(images), input2=_UInt8RGB(real), fid=True,
                                               feature_extractor_weights_path=str(weights),
                                               cuda=torch.cuda.is_available(), verbose=False)
    return {"fid": float(metrics["frechet_inception_distance"]), "n_generated": len(images),
            "n_reference": len(real)}
