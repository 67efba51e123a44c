"""Fidelity and variety apart: precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al.
2020), on the same features as the classifier FD.

A Frechet distance mixes two failures: samples that look like no real image (fidelity) and real images that no
sample looks like (variety).  These measures separate them with k-nearest-neighbour balls in feature space.  With
real features X_1..X_N, generated Y_1..Y_M and NND_k(Z) the distance from Z to its k-th nearest neighbour among the
other points of its own set:

* precision = (1/M) sum_j 1[exists i: ||Y_j - X_i|| <= NND_k(X_i)]   (samples inside the real manifold)
* recall    = (1/N) sum_i 1[exists j: ||X_i - Y_j|| <= NND_k(Y_j)]   (real images inside the generated manifold)
* density   = (1/(k M)) sum_j sum_i 1[||Y_j - X_i|| <= NND_k(X_i)]  (how many real balls hold each sample; about 1
  for samples distributed as the data, above 1 where samples crowd the dense regions)
* coverage  = (1/N) sum_i 1[exists j: ||Y_j - X_i|| <= NND_k(X_i)]  (real balls that hold at least one sample)

Recall builds its balls around the generated samples, so a few outliers inflate it (Naeem et al.'s reason for
coverage, which builds them around the real images only).
"""
from __future__ import annotations

import torch

__all__ = ["K_PRECISION_RECALL", "K_DENSITY_COVERAGE", "knn_radii", "precision_recall", "density_coverage",
           "manifold_report"]

#: the k of each pair of measures, their papers' own
K_PRECISION_RECALL = 3
K_DENSITY_COVERAGE = 5


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)), float64."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")  # exact ties


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """NND_k of every point: the distance to its k-th nearest neighbour among the other points of the set."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.ndim != 2 or len(f) <= k:
        raise ValueError(f"k-nearest-neighbour radii need more than k = {k} points (n, d), got {tuple(f.shape)}")
    d = _distances(f, f)
    d.fill_diagonal_(float("inf"))  # a point is not its own neighbour
    return d.kthvalue(k, dim=1).values


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = K_PRECISION_RECALL) -> tuple[float, float]:
    """(precision, recall) of Kynkäänniemi et al. 2019 with k-th nearest neighbour balls (their k = 3)."""
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    d = _distances(fake, real)  # (M, N)
    precision = (d <= knn_radii(real, k)[None, :]).any(1).double().mean()
    recall = (d <= knn_radii(fake, k)[:, None]).any(0).double().mean()
    return float(precision), float(recall)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = K_DENSITY_COVERAGE) -> tuple[float, float]:
    """(density, coverage) of Naeem et al. 2020, with balls around the real features only (their k = 5)."""
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    inside = _distances(fake, real) <= knn_radii(real, k)[None, :]  # (M, N): sample j in real ball i
    density = inside.double().sum() / (k * len(fake))
    coverage = inside.any(0).double().mean()
    return float(density), float(coverage)


def manifold_report(real: torch.Tensor, fake: torch.Tensor, k_pr: int = K_PRECISION_RECALL,
                    k_dc: int = K_DENSITY_COVERAGE) -> dict | None:
    """The four measures as a JSON-ready dict, with the k of each; None when either set has too few points for
    the balls (k + 1)."""
    if min(len(real), len(fake)) <= max(k_pr, k_dc):
        return None
    precision, recall = precision_recall(real, fake, k_pr)
    density, coverage = density_coverage(real, fake, k_dc)
    return {"precision": precision, "recall": recall, "k_precision_recall": k_pr,
            "density": density, "coverage": coverage, "k_density_coverage": k_dc}
