"""Min-SNR-gamma weighting of L_simple (Hang et al. 2023): the weights against their closed form, the weighted
loss against a per-sample computation, and the setting through the config and the CLI."""
import json

import pytest
import torch
from conftest import TINY

from ddpm.cli.main import main
from ddpm.core.diffusion import loss_simple, min_snr_weights
from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.runs.config import TrainConfig

SCHED = make_schedule(ScheduleConfig())  # the paper's linear schedule, T = 1000


def test_weights_are_min_snr_over_snr():
    t = torch.arange(1000)
    w = min_snr_weights(SCHED, t, 5.0)
    abar = torch.tensor([float(a) for a in SCHED.alpha_bars], dtype=torch.float64)  # apart from the function
    snr = abar / (1 - abar)
    expected = torch.where(snr > 5.0, 5.0 / snr, torch.ones_like(snr))
    torch.testing.assert_close(w, expected.float(), rtol=1e-6, atol=0)
    # SNR falls with t: the low-noise steps at the start are down-weighted, the rest keep weight 1
    first_full = int((w == 1).nonzero()[0])
    assert (w[:first_full] < 1).all() and (w[first_full:] == 1).all() and 0 < first_full < 1000
    assert float(w[0]) == pytest.approx(5.0 * (1 - float(SCHED.alpha_bars[0])) / float(SCHED.alpha_bars[0]), rel=1e-6)


def test_weighted_loss_is_the_mean_of_weighted_per_sample_errors():
    g = torch.Generator().manual_seed(0)
    out, noise = torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, 1, 3, 3, generator=g)
    w = torch.tensor([0.5, 1.0, 2.0, 0.0])
    per_sample = [((out[i] - noise[i]) ** 2).mean() for i in range(4)]
    expected = sum(wi * e for wi, e in zip(w, per_sample)) / 4
    assert float(loss_simple(out, noise, weights=w)) == pytest.approx(float(expected))
    # all weights 1 is the paper's L_simple, and a gamma above every SNR weighs nothing down
    assert float(loss_simple(out, noise, weights=torch.ones(4))) == pytest.approx(float(loss_simple(out, noise)))
    t = torch.tensor([0, 10, 500, 999])
    huge = float(SCHED.alpha_bars[0] / (1 - SCHED.alpha_bars[0])) * 2
    assert torch.equal(min_snr_weights(SCHED, t, huge), torch.ones(4))


@pytest.mark.parametrize("kw", [{"min_snr_gamma": 0.0}, {"min_snr_gamma": -1.0},
                                {"min_snr_gamma": 5.0, "loss": "hybrid", "variance": "learned-range"}])
def test_config_refuses_what_min_snr_cannot_weigh(kw):
    with pytest.raises(ValueError, match="min_snr_gamma"):
        TrainConfig(**kw)


def test_a_tiny_min_snr_run_trains_and_records_gamma(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--min-snr-gamma", "5", "--steps", "2", "--run-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["min_snr_gamma"] == 5.0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses)
