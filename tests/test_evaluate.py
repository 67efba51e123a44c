"""The evaluation runners write what they return, and agree with the library functions they wrap."""
import json
import math

import pytest
import torch

from ddpm.core.likelihood import calc_bpd_full, calc_bpd_quick
from ddpm.core.schedule import Schedule, linear_betas
from ddpm.data.datasets import to_model_range
from ddpm.evaluation import quality as Q
from ddpm.evaluation import reports as E

SCHED = Schedule(linear_betas(20, 1e-3, 0.4))


def eps_model(x, t):
    """E[eps | x_t] for data N(0, 0.3^2) per dim: a deterministic, reasonable predictor."""
    a = SCHED.alpha_bars[t].to(x.dtype).view(-1, 1, 1, 1)
    return (1 - a).sqrt() * x / (a * 0.09 + 1 - a)


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    return ((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_run_nll_full_writes_json_and_plot(tmp_path):
    x = _images()
    res = E.run_nll(eps_model, SCHED, x, tmp_path, variance="fixed-small", batch_size=4, seed=3)
    saved = json.loads((tmp_path / "nll.json").read_text())
    assert saved["bpd"] == pytest.approx(res["bpd"]) and saved["mode"] == "full"
    assert (tmp_path / "nll_terms.png").stat().st_size > 1000
    ref = calc_bpd_full(eps_model, SCHED, to_model_range(x), generator=torch.Generator().manual_seed(3),
                        variance="fixed-small", batch_size=4)
    assert res["per_image_bpd"] == pytest.approx(ref.total_bpd.tolist(), rel=1e-12)   # same seed, same draws
    assert res["bpd"] == pytest.approx(ref.total_bpd.mean().item())
    assert res["bpd_stderr"] == pytest.approx(ref.total_bpd.std().item() / math.sqrt(6))
    assert res["bpd"] == pytest.approx(res["decoder_bpd"] + res["kl_bpd"] + res["prior_bpd"], rel=1e-10)
    assert len(res["terms_mean_bpd"]) == 20 and "bits/dim" in E.nll_summary(res)


def test_run_nll_quick(tmp_path):
    res = E.run_nll(eps_model, SCHED, _images(), tmp_path, quick_k=5, seed=1)
    assert res["mode"] == "quick" and res["strata"][0] == 1 and res["strata"][-1] == 20
    assert res["bpd"] == pytest.approx(res["decoder_bpd"] + res["kl_bpd"] + res["prior_bpd"], rel=1e-10)
    # the same seed gives the same draws; the per-image standard errors pool as variances: the root mean square
    # sqrt(mean_i se_i^2), the typical per-image Monte Carlo error (sqrt(mean se_i^2 / N) is that of the mean bpd)
    ref = calc_bpd_quick(eps_model, SCHED, to_model_range(_images()), 5, generator=torch.Generator().manual_seed(1),
                         variance="fixed-large", spacing="log", batch_size=64)
    se = ref.stderr.tolist()
    rms = math.sqrt(sum(v * v for v in se) / len(se))
    assert res["per_image_bpd"] == pytest.approx(ref.total_bpd.tolist(), rel=1e-12)
    assert res["per_image_stderr_mean"] == pytest.approx(rms, rel=1e-12)
    assert rms - sum(se) / len(se) > 1e-3 * rms                  # the images' errors differ: RMS > plain mean
    assert res["bpd_stderr"] == pytest.approx(ref.total_bpd.std().item() / math.sqrt(6))
    assert json.loads((tmp_path / "nll.json").read_text())["k"] == 5
    assert (tmp_path / "nll_terms.png").is_file() and "strata" in E.nll_summary(res)


def test_run_quality_writes_report(tmp_path):
    torch.manual_seed(0)
    model = Q.DigitClassifier().eval()                   # untrained: the runner only needs its outputs
    info = {"key": "untrained", "test_accuracy": 0.1}
    x = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    rep = E.run_quality(x, tmp_path, classifier=(model, info), kid_subsets=5)
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["fd"] == pytest.approx(rep["fd"]) and saved["floor"]["n"] == 40
    assert sum(saved["classes"]["counts"]) == 40 and "classifier FD" in E.quality_summary(rep)


def test_load_samples_reads_an_npz(tmp_path):
    from ddpm.runs.images import save_npz
    x = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    save_npz(tmp_path / "samples.npz", x)
    assert torch.equal(E.load_samples(tmp_path / "samples.npz"), x)


def test_load_samples_keeps_the_files_own_shape_when_asked(tmp_path):
    """Inception FID reads colour samples at their own size; the digit yardstick makes them grey 32x32."""
    from ddpm.data.files import native_shape
    from ddpm.runs.images import save_npz
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    save_npz(tmp_path / "samples.npz", x)
    assert native_shape(tmp_path / "samples.npz") == (3, 16)
    assert torch.equal(E.load_samples(tmp_path / "samples.npz", None, None), x)
    assert E.load_samples(tmp_path / "samples.npz").shape == (3, 1, 32, 32)
    folder = tmp_path / "pngs"
    folder.mkdir()
    from PIL import Image
    Image.fromarray(x[0].permute(1, 2, 0).numpy()).save(folder / "a.png")
    assert native_shape(folder) == (3, 16)
