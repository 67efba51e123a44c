"""Sample quality for grey 32x32 digits, offline: a small CNN classifier's features give a Frechet distance
("classifier FD") and a kernel inception distance (KID) against real digits, and its predictions give the
histogram of generated classes (are all ten digits there?).

The classifier is trained reproducibly (fixed seeds) on the embedded digits' train split
(:func:`ddpm.data.digits_split`, 28x28 padded to 32x32, as the data module pads them), in well under a
minute on two CPU cores, and cached as safetensors under ``cache_dir()`` (``$DDPM_CACHE`` or
``~/.cache/ddpm``), keyed by a hash of its recipe and of the training data, written atomically.

These numbers are comparable only with numbers from the same recipe (the report carries its key) and the
same sample sizes: FD and KID are measured against real test digits, and :func:`real_floor` measures
real train digits the same way, the value a perfect copy of the training data would get.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CACHE_ENV", "cache_dir", "ClassifierRecipe", "DigitClassifier", "prepare_images", "train_classifier",
    "load_classifier", "classifier_outputs", "feature_stats", "frechet_distance", "fd_from_features",
    "mmd2_unbiased", "kid", "class_histogram", "quality_report", "real_floor", "format_quality",
]

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
    to grey.  28x28 images are padded with black (-1) by 2 pixels, as :mod:`ddpm.data` pads the digits;
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


def _digits(split: str):
    from .data import digits_split
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
        x, y = _digits("train")
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
        from tqdm.auto import tqdm
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
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    x_train, y_train = _digits("train")
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
    model = _train_prepared(recipe, x_train, y_train, progress)
    x_test, y_test = _digits("test")
    acc = _accuracy(model, x_test, y_test)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, tmp, metadata={"test_accuracy": repr(acc), "recipe": json.dumps(asdict(recipe))})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return model, {"key": key, "test_accuracy": acc, "path": str(path), "trained": True}


# ------------------------------------------------------------------------------------------- metrics

@torch.no_grad()
def _outputs(model: DigitClassifier, x: torch.Tensor, batch_size: int = 500):
    model.eval()
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        h = model._hidden(x[i:i + batch_size])
        feats.append((h / model.feature_scale).double())
        logits.append(model.head(h).double())
    return torch.cat(feats), torch.cat(logits)


def classifier_outputs(model: DigitClassifier, images, batch_size: int = 500):
    """(penultimate features (N, feature_dim), logits (N, 10)), float64, for uint8 digits."""
    return _outputs(model, prepare_images(images), batch_size)


def feature_stats(features: torch.Tensor):
    """Mean (d,) and unbiased covariance (d, d) of (n, d) features, float64."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (n >= 2, d), got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues from
    round-off are set to 0)."""
    w, v = torch.linalg.eigh(0.5 * (a + a.T))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein squared) distance of N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Tr (sigma1 sigma2)^(1/2) = Tr (A sigma2 A)^(1/2) with A = sigma1^(1/2): A sigma2 A is similar to
    sigma1 sigma2 and symmetric PSD, so its eigenvalues are real and >= 0 (up to round-off) and the trace
    is the sum of their square roots.  Float64, symmetric eigendecompositions only.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    a = _sqrtm_psd(s1)
    m = a @ s2 @ a
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt)


def fd_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to two feature sets."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of two samples with the kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018):
    mean of k over distinct pairs within x, plus the same within y, minus twice the mean over x-y pairs."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("MMD needs at least two samples on each side")
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """Kernel inception distance on features: mean and standard deviation of :func:`mmd2_unbiased` over
    ``subsets`` random subsets of m = min(subset_size, n1 // 2, n2 // 2) features from each side (drawn
    without replacement within a subset).  m is capped at half of each set so that the subsets differ and
    the standard deviation says how much one subset's value can be trusted."""
    g = torch.Generator().manual_seed(seed)
    m = max(2, min(subset_size, len(f1) // 2, len(f2) // 2))
    vals = torch.tensor([mmd2_unbiased(f1[torch.randperm(len(f1), generator=g)[:m]],
                                       f2[torch.randperm(len(f2), generator=g)[:m]]) for _ in range(subsets)],
                        dtype=torch.float64)
    return float(vals.mean()), float(vals.std()) if subsets > 1 else 0.0


def class_histogram(logits: torch.Tensor, min_share: float = 0.05) -> dict:
    """What the classifier thinks was generated: counts and shares of the predicted classes, their entropy in
    bits (log2 10 = 3.32 for a uniform mix), the number of classes with at least ``min_share`` of the images,
    and the mean top softmax probability (low means shapes the classifier finds ambiguous)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    counts = torch.bincount(logits.argmax(1), minlength=NUM_CLASSES)
    shares = counts.double() / counts.sum()
    nz = shares[shares > 0]
    return {
        "counts": counts.tolist(),
        "shares": [round(v, 6) for v in shares.tolist()],
        "entropy_bits": abs(float((nz * nz.log2()).sum())),
        "max_entropy_bits": math.log2(NUM_CLASSES),
        "classes_present": int((shares >= min_share).sum()),
        "min_share": min_share,
        "mean_confidence": float(logits.softmax(1).max(1).values.mean()),
    }


def _metrics(model, x: torch.Tensor, ref_feats: torch.Tensor, kid_subsets: int, kid_subset_size: int, seed: int):
    feats, logits = _outputs(model, x)
    kid_mean, kid_std = kid(feats, ref_feats, kid_subsets, kid_subset_size, seed)
    return {"n": len(x), "fd": fd_from_features(feats, ref_feats), "kid_mean": kid_mean, "kid_std": kid_std,
            "kid_subset_size": max(2, min(kid_subset_size, len(x) // 2, len(ref_feats) // 2)),
            "classes": class_histogram(logits)}


def _reference(reference) -> tuple[str, torch.Tensor]:
    if isinstance(reference, str):
        if reference not in ("test", "train"):
            raise ValueError(f"reference must be 'test', 'train' or an image tensor, got {reference!r}")
        return reference, _digits(reference)[0]
    return "custom", prepare_images(reference)


def real_floor(n: int | None = None, reference: str = "test", *, classifier=None, cache=None,
               recipe: ClassifierRecipe = ClassifierRecipe(), kid_subsets: int = 100, kid_subset_size: int = 1000,
               seed: int = 0) -> dict:
    """The metrics of real digits from the other split against ``reference`` ("test": n train digits,
    "train": n test digits; n = None: all of them), measured exactly as :func:`quality_report` measures
    samples.  The n digits are a seeded random subset, so use the generated set's size."""
    model, info = classifier if classifier is not None else load_classifier(recipe, cache)
    name, ref = _reference(reference)
    if name == "custom":
        raise ValueError("real_floor needs reference 'test' or 'train'")
    x, _ = _digits("train" if name == "test" else "test")
    if n is not None and n < len(x):
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]
    ref_feats, _ = _outputs(model, ref)
    out = _metrics(model, x, ref_feats, kid_subsets, kid_subset_size, seed)
    out["images"] = f"{'train' if name == 'test' else 'test'} split"
    return out


def quality_report(images, reference="test", *, classifier=None, cache=None,
                   recipe: ClassifierRecipe = ClassifierRecipe(), kid_subsets: int = 100, kid_subset_size: int = 1000,
                   seed: int = 0, floor: bool = True) -> dict:
    """Classifier FD, KID and class histogram of uint8 digits ``images`` against ``reference`` ("test" or
    "train" split of the embedded digits, or a uint8 image tensor).

    classifier: (model, info) from :func:`load_classifier` (default: loaded or trained from ``recipe`` in
    ``cache``).  floor: add ``real_floor`` measured with the same number of images (for "test"/"train").
    Returns a JSON-ready dict.
    """
    model, info = classifier if classifier is not None else load_classifier(recipe, cache)
    name, ref = _reference(reference)
    x = prepare_images(images)
    if len(x) < 2:
        raise ValueError("quality metrics need at least 2 images")
    ref_feats, _ = _outputs(model, ref)
    report = {"reference": name, "reference_n": len(ref), **_metrics(model, x, ref_feats, kid_subsets,
                                                                       kid_subset_size, seed),
              "classifier": {"key": info["key"], "test_accuracy": info["test_accuracy"]}}
    if floor and name != "custom":
        report["floor"] = real_floor(len(x), name, classifier=(model, info), kid_subsets=kid_subsets,
                                     kid_subset_size=kid_subset_size, seed=seed)
    return report


def format_quality(report: dict) -> str:
    """A few lines for the terminal."""
    c = report["classes"]
    lines = [
        f"{report['n']} images vs {report['reference_n']} {report['reference']} digits "
        f"(classifier {report['classifier']['key']}, test accuracy {100 * report['classifier']['test_accuracy']:.1f}%)",
        f"  classifier FD  {report['fd']:10.3f}",
        f"  KID            {report['kid_mean']:10.5f} +- {report['kid_std']:.5f} (subsets of {report['kid_subset_size']})",
        f"  classes        {c['classes_present']}/10 with >= {100 * c['min_share']:.0f}% of the images, entropy "
        f"{c['entropy_bits']:.2f}/{c['max_entropy_bits']:.2f} bits, mean confidence {c['mean_confidence']:.3f}",
        f"  counts         {' '.join(f'{d}:{k}' for d, k in enumerate(c['counts']))}",
    ]
    if "floor" in report:
        f = report["floor"]
        lines.append(f"  real floor ({f['n']} {f['images']} digits): FD {f['fd']:.3f}, KID {f['kid_mean']:.5f}, "
                     f"{f['classes']['classes_present']}/10 classes")
    return "\n".join(lines)
