"""Writing pictures: grids, single PNGs, .npz batches, and denoising chains (strip and GIF).

Images come in as a uint8 tensor (N, C, H, W), a float tensor in [-1, 1] (N, C, H, W) (converted with
:func:`ddpm.data.datasets.to_uint8`), or a uint8 NumPy array (N, H, W, C) or (N, H, W); C is 1 or 3.
Every file is written atomically through :func:`ddpm.runtime.atomic.atomic_write_path`: a reader sees the old file or
the complete new one, never a partial write.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.datasets import to_uint8
from ..runtime.atomic import atomic_write_path as atomic_write_path

__all__ = ["atomic_write_path", "as_nhwc_uint8", "make_grid", "save_grid", "save_individual", "save_npz",
           "save_chain_strip", "save_chain_gif"]


def as_nhwc_uint8(images) -> np.ndarray:
    """Any accepted image batch (see the module docstring) -> uint8 NumPy array (N, H, W, C), C in {1, 3}."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"expected an image tensor (N, C, H, W), got shape {tuple(x.shape)}")
        if x.is_floating_point():
            x = to_uint8(x)
        elif x.dtype != torch.uint8:
            raise ValueError(f"image tensors must be uint8 or float in [-1, 1], got {x.dtype}")
        a = x.permute(0, 2, 3, 1).contiguous().numpy()
    else:
        a = np.asarray(images)
        if a.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {a.dtype}")
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4:
            raise ValueError(f"expected an image array (N, H, W, C) or (N, H, W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape (N, H, W, C) = {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("no images to write")
    return a


def _to_pil(a: np.ndarray) -> Image.Image:
    """uint8 (H, W, C) -> PIL image, mode L or RGB."""
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, mode="L" if a.shape[-1] == 1 else "RGB")


def _grid_array(a: np.ndarray, nrow: int | None, padding: int, pad_value: int) -> np.ndarray:
    n, h, w, c = a.shape
    ncol = nrow if nrow else math.ceil(math.sqrt(n))
    ncol = max(1, min(ncol, n))
    nrows = math.ceil(n / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), pad_value, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top:top + h, left:left + w] = a[k]
    return grid


def make_grid(images, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> Image.Image:
    """Tile images into one picture, ``nrow`` images per row (default ceil(sqrt(N)): near-square).

    With N images of H x W, ncol = min(nrow, N) and nrows = ceil(N / ncol), the picture is
    (ncol * (W + padding) + padding) wide and (nrows * (H + padding) + padding) high; empty cells and
    padding are ``pad_value``.  Mode L for 1 channel, RGB for 3.
    """
    return _to_pil(_grid_array(as_nhwc_uint8(images), nrow, padding, pad_value))


def _save_pil(img: Image.Image, path, **kwargs) -> Path:
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}; use .png")
    with atomic_write_path(path) as tmp:
        img.save(tmp, format=fmt, **kwargs)
    return path


def save_grid(path, images, nrow: int | None = None, padding: int = 2) -> Path:
    """Write :func:`make_grid` of ``images`` to ``path`` (format from the extension, e.g. .png)."""
    return _save_pil(make_grid(images, nrow=nrow, padding=padding), path)


def save_individual(folder, images, prefix: str = "sample", start: int = 0) -> list[Path]:
    """One PNG per image: ``folder/{prefix}_{index:0Nd}.png``, indices from ``start``, zero-padded to at
    least 5 digits (more when needed), so names sort in index order."""
    a = as_nhwc_uint8(images)
    folder = Path(folder)
    width = max(5, len(str(start + len(a) - 1)))
    paths = []
    for k in range(len(a)):
        paths.append(_save_pil(_to_pil(a[k]), folder / f"{prefix}_{start + k:0{width}d}.png"))
    return paths


def save_npz(path, images, labels=None) -> Path:
    """Store images as uint8 (N, H, W, C) under the key "images" of a compressed .npz file, and class ``labels``
    (N integers), when given, as int64 under "labels"."""
    a = as_nhwc_uint8(images)
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: an image archive needs the .npz extension")
    arrays = {"images": a}
    if labels is not None:
        arrays["labels"] = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64)
        if arrays["labels"].shape != (len(a),):
            raise ValueError(f"{path}: {arrays['labels'].shape} labels for {len(a)} images; pass one per image")
    with atomic_write_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


# ------------------------------------------------------------------------------------------------ chains

def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _label_height(font) -> int:
    _, _, _, b = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), "0123456789t=", font=font)
    return b + 3


def _fits(font, labels: Sequence[str], width: int) -> bool:
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    return all(draw.textlength(s, font=font) <= width for s in labels)


def _chain_arrays(chain) -> list[tuple[int, np.ndarray]]:
    if not chain:
        raise ValueError("the chain has no frames")
    frames = [(int(t), as_nhwc_uint8(x)) for t, x in chain]
    shape = frames[0][1].shape
    for t, a in frames:
        if a.shape != shape:
            raise ValueError(f"chain frame t={t} has shape {a.shape}, the first frame {shape}; all must match")
    return frames


def _upscale(a: np.ndarray, scale: int) -> np.ndarray:
    return a if scale == 1 else a.repeat(scale, axis=-3).repeat(scale, axis=-2)


def save_chain_strip(path, chain, padding: int = 2, scale: int = 1, labels: bool = True) -> Path:
    """A denoising chain as one picture: one row per sample, one column per frame (noise on the left).

    chain: list of (t, images (K, C, H, W)) frames, from x_T to x_0, as :func:`ddpm.core.samplers.ancestral_sample`
    returns with ``chain_every``.  ``scale`` enlarges pixels (nearest neighbour).  With ``labels`` the
    frame's t is written above its column in Pillow's default font, when every label fits its column.
    """
    frames = _chain_arrays(chain)
    k, h, w, c = frames[0][1].shape
    cols = [_upscale(a, scale) for _, a in frames]
    h, w = h * scale, w * scale
    # lay out as a K x F grid, row-major by sample
    tiles = np.stack(cols, axis=1).reshape(k * len(frames), h, w, c)
    grid = _grid_array(tiles, len(frames), padding, 0)
    font = _font()
    texts = [str(t) for t, _ in frames]
    if labels and _fits(font, texts, w + padding):
        top = _label_height(font)
        canvas = np.zeros((grid.shape[0] + top, grid.shape[1], c), dtype=np.uint8)
        canvas[top:] = grid
        img = _to_pil(canvas)
        draw = ImageDraw.Draw(img)
        fill = 255 if c == 1 else (255, 255, 255)
        for j, s in enumerate(texts):
            centre = padding + j * (w + padding) + w / 2
            draw.text((centre - draw.textlength(s, font=font) / 2, 1), s, fill=fill, font=font)
    else:
        img = _to_pil(grid)
    return _save_pil(img, path)


def save_chain_gif(path, chain, duration_ms: int = 80, hold_last_ms: int = 1500, nrow: int | None = None,
                   padding: int = 2, scale: int = 1, labels: bool = True) -> Path:
    """Animate a denoising chain: frame j is the grid of the K samples at chain[j]'s t ("t=..." above it
    when it fits), shown ``duration_ms``; the last frame is held ``hold_last_ms``; loops forever.

    Pillow merges consecutive identical frames into one (adding their durations).
    """
    frames = _chain_arrays(chain)
    font = _font()
    pictures = []
    for t, a in frames:
        grid = _grid_array(_upscale(a, scale), nrow, padding, 0)
        img = _to_pil(grid)
        s = f"t={t}"
        if labels and _fits(font, [s], grid.shape[1]):
            top = _label_height(font)
            canvas = Image.new(img.mode, (img.width, img.height + top), 0)
            canvas.paste(img, (0, top))
            ImageDraw.Draw(canvas).text((2, 1), s, fill=255 if img.mode == "L" else (255, 255, 255), font=font)
            img = canvas
        pictures.append(img)
    durations = [int(duration_ms)] * (len(pictures) - 1) + [int(max(hold_last_ms, duration_ms))]
    path = Path(path)
    with atomic_write_path(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
