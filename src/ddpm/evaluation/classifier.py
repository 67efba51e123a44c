"""The digit classifier behind the sample-quality metrics of :mod:`ddpm.evaluation.quality`.

A small CNN trained reproducibly (fixed seeds) on the embedded digits' train split
(:func:`ddpm.data.embedded.digits_split`, 28x28 padded to 32x32, as the data module pads them), in well under a
minute on two CPU cores, and cached as safetensors under ``cache_dir()`` (``$DDPM_CACHE`` or
``~/.cache/ddpm``), keyed by a hash of its recipe and of the training data, written atomically.
Its penultimate layer gives the features of the classifier FD and KID; its predictions the class histogram.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.embedded import digits_split
from ..runtime.atomic import atomic_write_path

__all__ = ["CACHE_ENV", "NUM_CLASSES", "IMAGE_SIZE", "cache_dir", "ClassifierRecipe", "DigitClassifier",
           "prepare_images", "prepared_digits", "train_classifier", "load_classifier"]

CACHE_ENV = "DDPM_CACHE"
NUM_CLASSES = 10
IMAGE_SIZE = 32


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where cached artefacts live: ``path`` if given, else ``$DDPM_CACHE``, else ``~/.cache/ddpm``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ddpm"


# ------------------------------------------------------------------------------------------- the classifier

@dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that determines the classifier's weights; its hash names the cache file.

    widths: channels of the three conv blocks (32 -> 16 -> 8 -> 4 pixels); feature_dim: the penultimate
    layer used for FD/KID.  Training: Adam with a one-cycle learning rate peaking at ``lr``, random affine
    augmentation (rotation +-rotate_deg, scale 1 +- scale, shift +-shift_px).  ``max_train``: train on a
    seeded random subset of that many images (for fast tests).
    """

    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    widths: tuple = (16, 32, 64)
    feature_dim: int = 128
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift_px: float = 2.0
    max_train: int | None = None
    version: int = 2

    def key(self, data_fingerprint: str = "") -> str:
        text = json.dumps({**asdict(self), "widths": list(self.widths), "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class DigitClassifier(nn.Module):
    """Three conv-ReLU-maxpool blocks and a ReLU feature layer; input (N, 1, 32, 32) in [-1, 1].

    :meth:`features` divides the feature layer by ``feature_scale`` (set after training to the RMS feature
    value on the training digits), so features are O(1) whatever the training run and the KID kernel
    (a.b / d + 1)^3 sees inner products near 1, as it does with Inception features.
    """

    def __init__(self, widths=(16, 32, 64), feature_dim: int = 128, num_classes: int = NUM_CLASSES):
        super().__init__()
        chans = [1, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(3))
        self.fc = nn.Linear(widths[-1] * (IMAGE_SIZE // 8) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._hidden(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._hidden(x))


def prepare_images(images) -> torch.Tensor:
    """uint8 digits -> float32 (N, 1, 32, 32) in [-1, 1].

    Accepts a torch tensor or NumPy array, (N, H, W), (N, 1, H, W) or (N, H, W, 1); 3 channels are averaged
    to grey.  28x28 images are padded with black (-1) by 2 pixels, as :mod:`ddpm.data.datasets` pads the digits;
    32x32 pass unchanged; other sizes are resized (bilinear, antialiased).
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).detach().cpu()
    if x.dtype != torch.uint8:
        raise ValueError(f"quality metrics take uint8 images (0..255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), (N, H, W, C) or (N, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no images")
    x = x.float().mean(dim=1, keepdim=True) / 127.5 - 1.0
    h, w = x.shape[-2:]
    if (h, w) == (28, 28):
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    elif (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def _augment(x: torch.Tensor, recipe: ClassifierRecipe, g: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift per image (one affine warp, black outside)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(recipe.rotate_deg)
    zoom = 1 + (torch.rand(n, generator=g) * 2 - 1) * recipe.scale
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * recipe.shift_px * 2 / IMAGE_SIZE
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def prepared_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images as the classifier reads them, labels) of a split of the embedded digits."""
    images, labels = digits_split(split)
    return prepare_images(images), labels


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(images.numpy().tobytes())
    h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def _accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return (pred == y).double().mean().item()


def train_classifier(recipe: ClassifierRecipe = ClassifierRecipe(), images: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None, progress: bool = False) -> DigitClassifier:
    """Train a :class:`DigitClassifier` from its recipe (default data: the digits' train split).

    Reproducible: the initial weights, the data order and the augmentation come from ``recipe.seed`` only.
    """
    if images is None:
        x, y = prepared_digits("train")
    else:
        x, y = prepare_images(images), torch.as_tensor(labels).long()
    return _train_prepared(recipe, x, y, progress)


def _train_prepared(recipe: ClassifierRecipe, x: torch.Tensor, y: torch.Tensor, progress: bool) -> DigitClassifier:
    """Train on one intra-op thread, whatever the process uses: the matrices are so small that more threads
    mostly add hand-offs (one epoch: 5.5 s on one thread, 25.7 s on two, on a busy 2-core machine), and a
    fixed thread count keeps the float sums, hence the weights, the same on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_one_thread(recipe, x, y, progress)
    finally:
        torch.set_num_threads(threads)


def _train_one_thread(recipe: ClassifierRecipe, x: torch.Tensor, y: torch.Tensor, progress: bool) -> DigitClassifier:
    if recipe.max_train and recipe.max_train < len(x):   # a seeded subset: the digits file is sorted by class
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(recipe.seed))[:recipe.max_train]
        x, y = x[keep], y[keep]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = DigitClassifier(recipe.widths, recipe.feature_dim)
    g = torch.Generator().manual_seed(recipe.seed + 1)
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    bar = None
    if progress:
        bar = tqdm(total=recipe.epochs * steps_per_epoch, desc="digit classifier", unit="step")
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            loss = F.cross_entropy(model(_augment(x[idx], recipe, g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        h = torch.cat([model._hidden(x[i:i + 500]) for i in range(0, len(x), 500)])
        model.feature_scale.fill_(h.pow(2).mean().sqrt().clamp(min=1e-12).item())
    return model


def load_classifier(recipe: ClassifierRecipe = ClassifierRecipe(), cache: str | os.PathLike | None = None,
                    progress: bool = False) -> tuple[DigitClassifier, dict]:
    """The classifier of ``recipe`` from the cache, trained (and cached) if missing or unreadable.

    Returns (model in eval mode, info) with info = {"key", "test_accuracy", "path", "trained"}: ``trained``
    says whether this call trained it.  The file is written to a temporary name and renamed into place.
    """

    x_train, y_train = prepared_digits("train")
    key = recipe.key(_fingerprint(x_train, y_train))
    path = cache_dir(cache) / f"digit_classifier_{key}.safetensors"
    model = DigitClassifier(recipe.widths, recipe.feature_dim)
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            info = {"key": key, "test_accuracy": float(meta["test_accuracy"]), "path": str(path), "trained": False}
            return model.eval().requires_grad_(False), info
        except Exception:  # corrupt or from another version: retrain below and replace it
            pass
    print(f"training the digit classifier of the quality yardstick (once; about a minute on 2 CPU cores), "
          f"cached as {path}", file=sys.stderr, flush=True)
    model = _train_prepared(recipe, x_train, y_train, progress)
    x_test, y_test = prepared_digits("test")
    acc = _accuracy(model, x_test, y_test)
    with atomic_write_path(path) as tmp:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp), metadata={"test_accuracy": repr(acc), "recipe": json.dumps(asdict(recipe))})
    return model, {"key": key, "test_accuracy": acc, "path": str(path), "trained": True}
