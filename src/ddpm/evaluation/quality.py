"""Sample quality for grey 32x32 digits, offline: the features of a small CNN classifier
(:mod:`ddpm.evaluation.classifier`) give a Frechet distance ("classifier FD") and a kernel inception distance (KID)
against real digits, and its predictions give the histogram of generated classes (are all ten digits there?).

These numbers are comparable only with numbers from the same classifier recipe (the report carries its key)
and the same sample sizes: FD and KID are measured against real test digits, and :func:`real_floor` measures
real train digits the same way, the value a perfect copy of the training data would get.

Samples drawn for chosen classes (a class-conditional run; ``labels``, label k being the digit k) also get their
**conditional accuracy**: the share of samples the classifier assigns to the class that was asked for, overall
and per class (:func:`conditional_accuracy`).
"""
from __future__ import annotations

import math

import torch

from .classifier import CACHE_ENV as CACHE_ENV
from .classifier import NUM_CLASSES, prepared_digits
from .classifier import ClassifierRecipe as ClassifierRecipe
from .classifier import DigitClassifier as DigitClassifier
from .classifier import cache_dir as cache_dir
from .classifier import load_classifier as load_classifier
from .classifier import prepare_images as prepare_images
from .classifier import train_classifier as train_classifier
from .manifold import manifold_report
from .pixels import pixel_report, stroke_stats

__all__ = [
    "CACHE_ENV", "cache_dir", "ClassifierRecipe", "DigitClassifier", "prepare_images", "train_classifier",
    "load_classifier", "classifier_outputs", "feature_stats", "frechet_distance", "fd_from_features",
    "mmd2_unbiased", "kid", "class_histogram", "conditional_accuracy", "quality_report", "real_floor",
    "MIN_PER_CLASS", "per_class_report",
    "format_quality",
]


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


def conditional_accuracy(logits: torch.Tensor, labels) -> dict:
    """How often the classifier's class (argmax of ``logits``, (N, 10)) is the class asked for, ``labels`` (N,)
    digits 0..9: overall (``accuracy``, over every sample), per class asked for (``per_class``: digit -> share,
    ``per_class_n``: digit -> samples; only classes that were asked for), the lowest class's share
    (``min_class_accuracy``, ``min_class``), and ``confusion`` (10 x 10 counts, row = asked, column = seen)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long).cpu()
    if y.shape != (len(logits),):
        raise ValueError(f"need one label per image: {tuple(y.shape)} labels for {len(logits)} images")
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be digits 0..{NUM_CLASSES - 1} (the classifier's classes), got "
                         f"{int(y.min())}..{int(y.max())}")
    seen = logits.argmax(1).cpu()
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    confusion.index_put_((y, seen), torch.ones_like(y), accumulate=True)
    asked = confusion.sum(1).tolist()
    hits = confusion.diagonal().tolist()
    per_class = {str(c): hits[c] / asked[c] for c in range(NUM_CLASSES) if asked[c]}
    worst = min(per_class, key=per_class.get)
    return {"accuracy": sum(hits) / len(y), "per_class": per_class,
            "per_class_n": {str(c): int(asked[c]) for c in range(NUM_CLASSES) if asked[c]},
            "min_class_accuracy": per_class[worst], "min_class": int(worst), "confusion": confusion.tolist()}


def _metrics(model, x: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], kid_subsets: int,
             kid_subset_size: int, seed: int, labels=None) -> dict:
    """Every measure of prepared images ``x`` against ``ref`` = (reference images, their features, their labels or
    None); ``labels``, the class each image was drawn as, adds the conditional accuracy and the per-class rows."""
    ref_x, ref_feats, ref_labels = ref
    feats, logits = _outputs(model, x)
    kid_mean, kid_std = kid(feats, ref_feats, kid_subsets, kid_subset_size, seed)
    out = {"n": len(x), "fd": fd_from_features(feats, ref_feats), "kid_mean": kid_mean, "kid_std": kid_std,
           "kid_subset_size": max(2, min(kid_subset_size, len(x) // 2, len(ref_feats) // 2)),
           "classes": class_histogram(logits), "manifold": manifold_report(ref_feats, feats),
           "pixels": pixel_report(x, ref_x, fd_from_features)}
    if labels is not None:
        out["conditional"] = conditional_accuracy(logits, labels)
        if ref_labels is not None:
            out["per_class"] = per_class_report(x, feats, torch.as_tensor(labels), ref_x, ref_feats, ref_labels)
    return out


#: the fewest images of a class, on each side, for its per-class row (the k-nearest-neighbour balls need k + 1)
MIN_PER_CLASS = 8


def per_class_report(x, feats, labels, ref_x, ref_feats, ref_labels) -> dict:
    """Per class drawn (digit -> row): precision, recall, density and coverage against the real images of that
    class, and the stroke statistics of both; classes with fewer than :data:`MIN_PER_CLASS` images on either side
    are left out."""
    rows = {}
    for c in sorted(set(labels.tolist())):
        mine, real = labels == c, torch.as_tensor(ref_labels) == c
        if int(mine.sum()) < MIN_PER_CLASS or int(real.sum()) < MIN_PER_CLASS:
            continue
        rows[str(c)] = {"n": int(mine.sum()), "reference_n": int(real.sum()),
                        **manifold_report(ref_feats[real], feats[mine]),
                        "strokes": stroke_stats(x[mine]), "reference_strokes": stroke_stats(ref_x[real])}
    return rows


def _reference(model, reference) -> tuple[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(name, (images, features, labels or None)) of a reference: a split of the digits or a uint8 image tensor."""
    if isinstance(reference, str):
        if reference not in ("test", "train"):
            raise ValueError(f"reference must be 'test', 'train' or an image tensor, got {reference!r}")
        x, y = prepared_digits(reference)
        return reference, (x, _outputs(model, x)[0], y)
    x = prepare_images(reference)
    return "custom", (x, _outputs(model, x)[0], None)


def real_floor(n: int | None = None, reference: str = "test", *, classifier=None, cache=None,
               recipe: ClassifierRecipe = ClassifierRecipe(), kid_subsets: int = 100, kid_subset_size: int = 1000,
               seed: int = 0, per_class: bool = False) -> dict:
    """The metrics of real digits from the other split against ``reference`` ("test": n train digits,
    "train": n test digits; n = None: all of them), measured exactly as :func:`quality_report` measures
    samples.  The n digits are a seeded random subset, so use the generated set's size.  ``per_class``: add the
    per-class rows, each real digit counted as drawn as its own label."""
    model, info = classifier if classifier is not None else load_classifier(recipe, cache)
    if reference not in ("test", "train"):
        raise ValueError("real_floor needs reference 'test' or 'train'")
    name, ref = _reference(model, reference)
    x, y = prepared_digits("train" if name == "test" else "test")
    if n is not None and n < len(x):
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[pick], y[pick]
    out = _metrics(model, x, ref, kid_subsets, kid_subset_size, seed, labels=y if per_class else None)
    out.pop("conditional", None)  # real digits are their own labels: only the per-class rows mean something
    out["images"] = f"{'train' if name == 'test' else 'test'} split"
    return out


def quality_report(images, reference="test", *, classifier=None, cache=None,
                   recipe: ClassifierRecipe = ClassifierRecipe(), kid_subsets: int = 100, kid_subset_size: int = 1000,
                   seed: int = 0, floor: bool = True, labels=None) -> dict:
    """Classifier FD, KID and class histogram of uint8 digits ``images`` against ``reference`` ("test" or
    "train" split of the embedded digits, or a uint8 image tensor).  ``labels``: the digit each image was drawn
    as (a class-conditional run's samples); adds ``conditional``, the :func:`conditional_accuracy`.

    classifier: (model, info) from :func:`load_classifier` (default: loaded or trained from ``recipe`` in
    ``cache``).  floor: add ``real_floor`` measured with the same number of images (for "test"/"train").
    Returns a JSON-ready dict.
    """
    model, info = classifier if classifier is not None else load_classifier(recipe, cache)
    x = prepare_images(images)
    if len(x) < 2:
        raise ValueError("quality metrics need at least 2 images")
    name, ref = _reference(model, reference)
    report = {"reference": name, "reference_n": len(ref[0]), **_metrics(model, x, ref, kid_subsets,
                                                                          kid_subset_size, seed, labels),
              "classifier": {"key": info["key"], "test_accuracy": info["test_accuracy"]}}
    if floor and name != "custom":
        report["floor"] = real_floor(len(x), name, classifier=(model, info), kid_subsets=kid_subsets,
                                     kid_subset_size=kid_subset_size, seed=seed, per_class=labels is not None)
    return report


def format_quality(report: dict) -> str:
    """A few lines for the terminal."""
    c = report["classes"]
    lines = [
        f"{report['n']} images vs {report['reference_n']} {report['reference']} digits "
        f"(classifier {report['classifier']['key']}, test accuracy {100 * report['classifier']['test_accuracy']:.1f}%)",
        f"  classifier FD  {report['fd']:10.3f}",
        f"  KID            {report['kid_mean']:10.5f} +- {report['kid_std']:.5f} "
        f"(subsets of {report['kid_subset_size']})",
        f"  classes        {c['classes_present']}/10 with >= {100 * c['min_share']:.0f}% of the images, entropy "
        f"{c['entropy_bits']:.2f}/{c['max_entropy_bits']:.2f} bits, mean confidence {c['mean_confidence']:.3f}",
        f"  counts         {' '.join(f'{d}:{k}' for d, k in enumerate(c['counts']))}",
        *_side_lines(report),
    ]
    if "conditional" in report:
        a = report["conditional"]
        lines.append(f"  conditional accuracy {100 * a['accuracy']:.1f}% (the classifier sees the digit asked for); "
                     f"lowest class {a['min_class']} at {100 * a['min_class_accuracy']:.1f}%")
        lines.append(f"  per class      {' '.join(f'{d}:{100 * v:.0f}%' for d, v in a['per_class'].items())}")
    if "floor" in report:
        f = report["floor"]
        m = f["manifold"]
        sides = "" if m is None else (f", precision {m['precision']:.3f}, recall {m['recall']:.3f}, coverage "
                                      f"{m['coverage']:.3f}")
        lines.append(f"  real floor ({f['n']} {f['images']} digits): FD {f['fd']:.3f}, KID {f['kid_mean']:.5f}, "
                     f"{f['classes']['classes_present']}/10 classes{sides}, pixel FD {f['pixels']['pixel_fd']:.3f}")
    return "\n".join(lines)


def _side_lines(report: dict) -> list[str]:
    """The terminal lines of the fidelity/variety split and the pixel measures (absent from older reports)."""
    if "pixels" not in report:
        return []
    m, p = report["manifold"], report["pixels"]
    s, r = p["strokes"], p["reference_strokes"]
    lines = []
    if m is not None:
        lines += [f"  precision      {m['precision']:10.3f}   recall   {m['recall']:.3f}   (fidelity / variety, "
                  f"k = {m['k_precision_recall']})",
                  f"  density        {m['density']:10.3f}   coverage {m['coverage']:.3f}   "
                  f"(k = {m['k_density_coverage']})"]
    return lines + [f"  pixel FD       {p['pixel_fd']:10.3f}   (PCA-{p['pca_components']} of the pixels)",
                    f"  strokes        mean pixel {s['mean_pixel']:.1f} (real {r['mean_pixel']:.1f}), ink "
                    f"{100 * s['ink_share']:.1f}% (real {100 * r['ink_share']:.1f}%), width "
                    f"{s['stroke_width']:.2f} px (real {r['stroke_width']:.2f})"]
