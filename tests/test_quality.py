"""Sample-quality metrics: Frechet distance and KID against closed forms, the digit classifier and its cache."""
import math
import os

import numpy as np
import pytest
import torch

from ddpm.data.embedded import digits_split
from ddpm.evaluation import classifier as C
from ddpm.evaluation import quality as Q

# A small recipe for the tests (about 4 s on one core, ~91% test accuracy); the default recipe is the same
# code with more data and epochs (4,500 images x 10 epochs, 98.4% test accuracy, about 30 s).
TINY = Q.ClassifierRecipe(epochs=3, max_train=1500)


# ---------------------------------------------------------------------------------------------- Frechet distance

def _random_spd(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_diagonal_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    a, b = torch.rand(8, generator=g, dtype=torch.float64) + 0.1, torch.rand(8, generator=g, dtype=torch.float64) + 0.1
    closed = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()   # commuting: Tr(sqrt(a) - sqrt(b))^2
    assert Q.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(closed.item(), rel=1e-10)


def test_frechet_distance_non_commuting_2x2_closed_form():
    """For 2x2 PSD M, Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)); sqrt(S1 S2) has the eigenvalues of S1 S2."""
    s1 = torch.tensor([[2.0, 0.7], [0.7, 0.5]], dtype=torch.float64)
    s2 = torch.tensor([[0.3, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    m = s1 @ s2
    tr_sqrt = math.sqrt(torch.trace(m).item() + 2 * math.sqrt(torch.det(m).item()))
    mu1, mu2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    closed = 0.25 + 6.25 + torch.trace(s1 + s2).item() - 2 * tr_sqrt
    assert Q.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)
    assert Q.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(closed, rel=1e-10)   # symmetric


def test_frechet_distance_proportional_covariances_and_identity():
    """S2 = c S1 (not diagonal, d = 64): Tr sqrt(S1 S2) = sqrt(c) Tr S1, so FD = (1 - sqrt c)^2 Tr S1."""
    g = torch.Generator().manual_seed(1)
    s = _random_spd(64, g)
    mu = torch.randn(64, generator=g, dtype=torch.float64)
    assert Q.frechet_distance(mu, s, mu, 2.5 * s) == pytest.approx((1 - math.sqrt(2.5)) ** 2 * torch.trace(s).item(),
                                                                   rel=1e-8)
    assert abs(Q.frechet_distance(mu, s, mu, s)) < 1e-9 * torch.trace(s).item()
    # rank-deficient covariances (10 samples, 64 dims) stay finite: the 55 null eigenvalues of S^2 carry
    # round-off ~1e-14, whose square roots add ~1e-7 each to Tr sqrt, so the tolerance is 55 * 2e-7 * 2
    f = torch.randn(10, 64, generator=g, dtype=torch.float64)
    val = Q.fd_from_features(f, f + 0.1)
    assert math.isfinite(val) and val == pytest.approx(64 * 0.01, abs=2.2e-5)


def test_fd_of_sample_features():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(500, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    assert abs(Q.fd_from_features(f, f)) < 1e-8
    shift = torch.randn(16, generator=g, dtype=torch.float64)
    # same covariance, shifted mean: FD = |shift|^2 exactly
    assert Q.fd_from_features(f, f + shift) == pytest.approx((shift ** 2).sum().item(), rel=1e-8)


def test_feature_stats_match_numpy():
    """The mean and the unbiased (n - 1) sample covariance, as numpy.mean and numpy.cov (ddof = 1) compute them;
    small n, so dividing by n instead would be off by a factor 7/8 = 0.875."""
    g = torch.Generator().manual_seed(5)
    f = torch.randn(8, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 2
    mu, cov = Q.feature_stats(f)
    assert np.allclose(mu.numpy(), f.numpy().mean(0), rtol=1e-13, atol=0)
    assert np.allclose(cov.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError):
        Q.feature_stats(f[:1])


def test_fd_from_features_with_different_covariances_closed_form():
    """Two small 2-d samples (n = 6 and 11) of different shapes: their np.cov covariances S1, S2 do not commute,
    and the 2x2 identity Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)) for M = S1 S2 (real, non-negative eigenvalues)
    gives FD = |mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 sqrt(Tr M + 2 sqrt(det M))."""
    g = torch.Generator().manual_seed(6)
    mix = torch.tensor([[1.0, 0.6], [0.0, 0.5]], dtype=torch.float64)
    f1 = torch.randn(6, 2, generator=g, dtype=torch.float64) @ mix
    f2 = torch.randn(11, 2, generator=g, dtype=torch.float64) * torch.tensor([0.3, 1.4], dtype=torch.float64) + 0.7
    a, b = f1.numpy(), f2.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    closed = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    assert Q.fd_from_features(f1, f2) == pytest.approx(closed, rel=1e-10)
    assert Q.fd_from_features(f2, f1) == pytest.approx(closed, rel=1e-10)


# ---------------------------------------------------------------------------------------------- KID

def test_mmd2_unbiased_matches_a_direct_double_loop():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64) + 0.3
    k = lambda a, b: (float(a @ b) / 4 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert Q.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def _mmd2_closed_form(d, v, mu):
    """MMD^2 of N(0, vI) and N(mu, vI) under k = (a.b/d + 1)^3, with u = a.b/d and c = |mu|^2:
    E k = 1 + 3 E u + 3 E u^2 + E u^3.  Within N(0, vI): E u = E u^3 = 0, E (a.b)^2 = d v^2.  Within N(mu, vI),
    a.b = c + mu.e1 + mu.e2 + e1.e2 (e ~ N(0, vI)): mean c, E (a.b)^2 = d v^2 + 2 v c + c^2,
    E (a.b)^3 = c^3 + 3 c (2 v c + d v^2) + 6 v^2 c.  Across: E a.b = 0, E (a.b)^2 = d v^2 + v c, odd moment 0."""
    c = float((mu ** 2).sum())
    kxx = 1 + 3 * v * v / d
    kyy = (1 + 3 * c / d + 3 * (d * v * v + 2 * v * c + c * c) / d ** 2
           + (c ** 3 + 3 * c * (2 * v * c + d * v * v) + 6 * v * v * c) / d ** 3)
    kxy = 1 + 3 * (d * v * v + v * c) / d ** 2
    return kxx + kyy - 2 * kxy


def test_kid_is_unbiased_near_zero_and_matches_closed_form_when_shifted():
    """30 independent pairs of 300 samples: each unbiased MMD^2 estimate is independent, so their mean is
    within 4 standard errors (sample sd / sqrt(30)) of the expectation: 0 for equal distributions, the closed
    form for a mean shift."""
    d, v, n, reps = 16, 1.0, 300, 30
    mu = torch.zeros(d, dtype=torch.float64)
    mu[:3] = torch.tensor([0.6, -0.3, 0.2])
    g = torch.Generator().manual_seed(4)
    same, shifted = [], []
    for _ in range(reps):
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        same.append(Q.mmd2_unbiased(x, torch.randn(n, d, generator=g, dtype=torch.float64)))
        shifted.append(Q.mmd2_unbiased(x, mu + torch.randn(n, d, generator=g, dtype=torch.float64)))
    same, shifted = torch.tensor(same), torch.tensor(shifted)
    closed = _mmd2_closed_form(d, v, mu)
    assert abs(same.mean().item()) < 4 * same.std().item() / math.sqrt(reps)
    assert abs(shifted.mean().item() - closed) < 4 * shifted.std().item() / math.sqrt(reps)
    assert closed > 10 * same.std().item() / math.sqrt(reps)           # the shift is clearly detectable
    x = torch.randn(600, d, generator=g, dtype=torch.float64)
    mean, std = Q.kid(x, mu + torch.randn(600, d, generator=g, dtype=torch.float64), subsets=20, subset_size=1000)
    assert std > 0 and abs(mean - closed) < 4 * std                 # subsets of 300 = half of each set


# ---------------------------------------------------------------------------------------------- class histogram

def test_class_histogram():
    logits = torch.full((20, 10), -5.0)
    labels = torch.tensor([3] * 10 + [7] * 9 + [1])
    logits[torch.arange(20), labels] = 5.0
    h = Q.class_histogram(logits, min_share=0.1)
    assert h["counts"] == [0, 1, 0, 10, 0, 0, 0, 9, 0, 0]
    p = np.array([0.05, 0.5, 0.45])
    assert h["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert h["classes_present"] == 2                                    # 3 and 7; class 1 has 5% < 10%
    conf = math.exp(5) / (math.exp(5) + 9 * math.exp(-5))
    assert h["mean_confidence"] == pytest.approx(conf)
    assert Q.class_histogram(logits[:10])["entropy_bits"] == 0.0


def test_prepare_images_pads_28_and_accepts_layouts():
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    p = Q.prepare_images(x)
    assert p.shape == (3, 1, 32, 32) and (p[:, :, :2] == -1).all() and (p[:, :, :, -2:] == -1).all()
    assert torch.equal(p[:, :, 2:30, 2:30], x.float() / 127.5 - 1)
    nhwc = x.permute(0, 2, 3, 1).numpy()
    assert torch.equal(Q.prepare_images(nhwc), p) and torch.equal(Q.prepare_images(x[:, 0]), p)
    with pytest.raises(ValueError):
        Q.prepare_images(x.float())


# ---------------------------------------------------------------------------------------------- classifier and cache

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, info = Q.load_classifier(TINY, cache)
    return model, info, cache


def test_classifier_trains_reproducibly_and_is_cached(tiny, monkeypatch):
    model, info, cache = tiny
    assert info["trained"] and info["test_accuracy"] > 0.85         # 1,500 images, 3 epochs
    files = os.listdir(cache)
    assert files == [f"digit_classifier_{info['key']}.safetensors"]  # nothing temporary left behind
    again = Q.train_classifier(TINY)                                  # same recipe, same weights
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    monkeypatch.setattr(C, "_train_prepared", lambda *a, **k: pytest.fail("retrained despite the cache"))
    loaded, info2 = Q.load_classifier(TINY, cache)
    assert not info2["trained"] and info2["test_accuracy"] == info["test_accuracy"] and info2["key"] == info["key"]
    monkeypatch.setenv(Q.CACHE_ENV, str(cache))                       # the environment variable names the folder
    assert Q.cache_dir() == cache and not Q.load_classifier(TINY)[1]["trained"]
    assert Q.ClassifierRecipe(epochs=4, max_train=1500).key() != TINY.key() and TINY.key("a") != TINY.key("b")


def test_corrupt_cache_file_is_replaced(tiny, tmp_path, monkeypatch):
    model, info, cache = tiny
    bad = tmp_path / os.path.basename(info["path"])
    bad.write_bytes(b"not a safetensors file")
    calls = []
    monkeypatch.setattr(C, "_train_prepared", lambda *a, **k: calls.append(1) or model)  # stands in for training
    m2, info2 = Q.load_classifier(TINY, tmp_path)
    assert calls == [1] and info2["trained"] and info2["test_accuracy"] == info["test_accuracy"]
    m3, info3 = Q.load_classifier(TINY, tmp_path)
    assert calls == [1] and not info3["trained"]
    assert all(torch.equal(a, b) for a, b in zip(m3.state_dict().values(), model.state_dict().values()))


def test_quality_report_real_collapsed_and_floor(tiny):
    model, info, _ = tiny
    test_x, test_y = digits_split("test")
    same = Q.quality_report(test_x, "test", classifier=(model, info), kid_subsets=10)
    assert abs(same["fd"]) < 1e-6 and same["classes"]["classes_present"] == 10
    assert same["n"] == same["reference_n"] == 500 and same["classifier"]["key"] == info["key"]
    floor = same["floor"]
    assert floor["n"] == 500 and floor["fd"] > 0 and floor["classes"]["classes_present"] == 10
    assert floor["fd"] == pytest.approx(Q.real_floor(500, "test", classifier=(model, info), kid_subsets=10)["fd"])
    ones = test_x[test_y == 1]                                         # mode collapse onto one digit
    collapsed = Q.quality_report(ones, "test", classifier=(model, info), kid_subsets=10)
    assert collapsed["classes"]["classes_present"] == 1 and collapsed["classes"]["entropy_bits"] < 1.0
    assert collapsed["fd"] > 10 * collapsed["floor"]["fd"]
    # 50 images give KID subsets of 25, so one subset's value scatters a lot: ask for 3 sd above 0
    assert collapsed["kid_mean"] > max(10 * abs(collapsed["floor"]["kid_mean"]), 3 * collapsed["kid_std"])
    text = Q.format_quality(collapsed)
    assert "classifier FD" in text and "KID" in text and "1/10" in text and "real floor" in text
