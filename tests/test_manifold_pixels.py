"""Precision/recall, density/coverage and the pixel measures against hand-computed cases."""
import pytest
import torch

from ddpm.evaluation import quality as Q
from ddpm.evaluation.manifold import density_coverage, knn_radii, manifold_report, precision_recall
from ddpm.evaluation.pixels import pca_features, stroke_stats


def _line(*xs):
    return torch.tensor([[float(x)] for x in xs])


def test_knn_radii_of_points_on_a_line():
    # 0, 1, 3, 7: nearest other points at 1, 1, 2, 4; second nearest at 3, 2, 3, 6
    x = _line(0, 1, 3, 7)
    assert knn_radii(x, 1).tolist() == [1, 1, 2, 4]
    assert knn_radii(x, 2).tolist() == [3, 2, 3, 6]
    with pytest.raises(ValueError, match="more than k"):
        knn_radii(x, 4)


def test_identical_sets_have_full_precision_recall_coverage_and_density_k_plus_1_over_k():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    density, coverage = density_coverage(x, x.clone(), k=5)
    # each real ball holds its own centre and exactly its k nearest neighbours (no ties in continuous data)
    assert coverage == 1.0 and density == pytest.approx(6 / 5)


def test_disjoint_sets_score_zero():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(60, 4, generator=g) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0) and density_coverage(real, fake) == (0.0, 0.0)


def test_a_subset_is_precise_but_covers_little_by_hand():
    real, fake = _line(*range(10)), _line(0, 1, 2)  # k = 1: every real ball has radius 1, every fake ball too
    p, r = precision_recall(real, fake, k=1)
    d, c = density_coverage(real, fake, k=1)
    assert p == 1.0                          # every sample lies on a real point
    assert r == pytest.approx(4 / 10)        # real 0..3 lie within 1 of a sample
    assert c == pytest.approx(4 / 10)        # the real balls of 0..3 hold a sample
    assert d == pytest.approx((2 + 3 + 3) / 3)  # sample 0 in the balls of 0, 1; sample 1 in 0, 1, 2; 2 in 1, 2, 3
    report = manifold_report(real, fake, k_pr=1, k_dc=1)
    assert report["precision"] == p and report["coverage"] == c and report["k_density_coverage"] == 1


def _rectangles(n, width, length, value=1.0):
    x = -torch.ones(n, 1, 32, 32)
    x[:, :, 4:4 + length, 10:10 + width] = value  # value 1.0 is intensity 255
    return x


def test_stroke_stats_of_a_rectangle_closed_form():
    s = stroke_stats(_rectangles(3, width=3, length=20))
    assert s["ink_share"] == pytest.approx(60 / 1024) and s["mean_pixel"] == pytest.approx(255 * 60 / 1024)
    assert s["stroke_width"] == pytest.approx(3 * 20 / (3 + 20)) and s["stroke_width_std"] == 0
    touching = -torch.ones(1, 1, 32, 32)
    touching[0, 0, :, 0:2] = 1.0             # a bar along the left border and the full height: P = 2 (2 + 32)
    assert stroke_stats(touching)["stroke_width"] == pytest.approx(2 * 64 / (2 * 34))
    grey = stroke_stats(_rectangles(1, 3, 20, value=0.0))   # 127.5 is not above the ink level
    assert grey["ink_share"] == 0 and grey["stroke_width"] == 0


def test_pixel_fd_is_zero_for_the_reference_and_grows_with_heavier_strokes():
    g = torch.Generator().manual_seed(2)
    ref = torch.cat([_rectangles(1, w, h) for w, h in torch.randint(1, 5, (300, 2), generator=g).tolist()]) \
        + 0.05 * torch.randn(300, 1, 32, 32, generator=g)
    a, b = pca_features(ref, ref)
    assert torch.equal(a, b) and Q.fd_from_features(a, b) == pytest.approx(0, abs=1e-9)
    heavy = torch.cat([_rectangles(1, w + 3, h + 3) for w, h in torch.randint(1, 5, (300, 2), generator=g).tolist()])
    light = torch.cat([_rectangles(1, w, h) for w, h in torch.randint(1, 5, (300, 2), generator=g).tolist()])
    assert Q.fd_from_features(*pca_features(heavy, ref)) > 5 * Q.fd_from_features(*pca_features(light, ref))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from test_quality import TINY
    return Q.load_classifier(TINY, tmp_path_factory.mktemp("cache"))


def test_quality_report_sees_fidelity_and_variety_apart(tiny_classifier):
    from ddpm.data.embedded import digits_split
    test_x, test_y = digits_split("test")
    same = Q.quality_report(test_x, "test", classifier=tiny_classifier, kid_subsets=5)
    assert same["manifold"]["precision"] == same["manifold"]["recall"] == same["manifold"]["coverage"] == 1.0
    assert same["pixels"]["pixel_fd"] == pytest.approx(0, abs=1e-9)
    floor = same["floor"]
    assert 0.5 < floor["manifold"]["precision"] < 1 and floor["pixels"]["pixel_fd"] > 0
    ones = test_x[test_y == 1]             # faithful but without variety: precision stays, recall falls
    collapsed = Q.quality_report(ones, "test", classifier=tiny_classifier, kid_subsets=5)["manifold"]
    # the 1s are a tenth of the real digits: coverage sees about that share; recall, whose balls are the samples'
    # own (wide where a few 1s are odd), falls too but less: the inflation that made Naeem et al. propose coverage
    assert collapsed["precision"] > 0.8 and collapsed["coverage"] < 0.2 and collapsed["recall"] < 0.6
    assert collapsed["coverage"] < collapsed["recall"]
    labelled = Q.quality_report(test_x, "test", classifier=tiny_classifier, kid_subsets=5, labels=test_y)
    rows = labelled["per_class"]
    assert sorted(rows) == [str(c) for c in range(10)] and all(r["precision"] == 1.0 for r in rows.values())
    assert rows["1"]["strokes"] == rows["1"]["reference_strokes"]
    assert sorted(labelled["floor"]["per_class"]) == sorted(rows) and "conditional" not in labelled["floor"]
    text = Q.format_quality(labelled)
    assert "precision" in text and "coverage" in text and "pixel FD" in text and "strokes" in text
