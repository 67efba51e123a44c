"""The training loss object (training/loss.py): today's objectives give the losses earlier versions gave, bit for
bit, and L_simple / Min-SNR equal their formulas recomputed here from the same draws."""
import pytest
import torch

from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.data.datasets import DataConfig
from ddpm.model.unet import preset
from ddpm.runs.config import TrainConfig
from ddpm.training.loss import OBJECTIVES, WEIGHTINGS, build_loss
from ddpm.training.trainer import Trainer

#: the first three step losses of a tiny run (seed 0, batch 8, sklearn digits at 8x8), recorded from the trainer as
#: it was before the loss object (float.hex, so that "the same" means the same bits)
RECORDED = {
    "simple": ({}, ["0x1.068fc00000000p+0", "0x1.1d0d260000000p+0", "0x1.f3e0f40000000p-1"]),
    "min_snr": ({"min_snr_gamma": 5.0}, ["0x1.03bf240000000p+0", "0x1.f31c640000000p-1", "0x1.9039640000000p-1"]),
    "vlb": ({"loss": "vlb", "variance": "learned-range"},
            ["0x1.2d69f40000000p+3", "0x1.b28b180000000p+3", "0x1.3068820000000p+5"]),
    "hybrid": ({"loss": "hybrid", "variance": "learned-range"},
               ["0x1.08f90c0000000p+0", "0x1.2087160000000p+0", "0x1.03ae320000000p+0"]),
    "hybrid_is": ({"loss": "hybrid", "variance": "learned-range", "importance_sampling": True},
                  ["0x1.0c7b7c0000000p+0", "0x1.34d22c0000000p+0", "0x1.0b7e0e0000000p+0"]),
    "cond": ({"class_cond": True}, ["0x1.068fc00000000p+0", "0x1.cb29140000000p-1", "0x1.eea77e0000000p-1"]),
}


def _trainer(tmp_path, **kw):
    cc = kw.pop("class_cond", False)
    cfg = TrainConfig(run_dir=str(tmp_path), model=preset("tiny"), data=DataConfig(source="sklearn-digits",
                      image_size=8, class_cond=cc), batch_size=8, steps=3, progress=False, compile="off", **kw)
    return Trainer(cfg)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_losses_repeat_the_recorded_ones_bit_for_bit(tmp_path, name):
    """Same seed, same losses as the trainer gave before its loss became an object (float32 bits on this CPU
    build of torch; another build may round differently, the tolerance is 0)."""
    kw, want = RECORDED[name]
    tr = _trainer(tmp_path, **dict(kw))
    try:
        got = [float(tr.train_step()[0]).hex() for _ in range(3)]
    finally:
        tr.close()
    assert got == want


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_simple_and_min_snr_equal_their_formula_on_the_same_draws(gamma):
    """eq. 14 (and Min-SNR's w_t = min(SNR_t, gamma) / SNR_t, Hang et al. 2023), recomputed from the generator's
    draws in the loss's order (t, then eps): per image mean_pixels (eps - net(x_t, t))^2 times w_t.  The network is a
    fixed linear map, so the only difference is float32 rounding in two orders of summation (rel 1e-6)."""
    s = make_schedule(ScheduleConfig(num_timesteps=50))
    cfg = TrainConfig(model=preset("tiny"), data=DataConfig(source="sklearn-digits", image_size=8), min_snr_gamma=gamma)
    loss = build_loss(cfg, s)
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    net = lambda x, t, y: 0.5 * x + 0.01 * t.view(-1, 1, 1, 1)  # noqa: E731
    got = loss(net, x0, None, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 50, (6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = s.alpha_bars[t].double().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    want = (eps.double() - (0.5 * x_t + 0.01 * t.view(-1, 1, 1, 1))).square().flatten(1).mean(1)
    if gamma is not None:
        snr = (abar / (1 - abar)).flatten()
        want = want * snr.clamp(max=gamma) / snr
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=0)
    assert loss.mean(net, x0, None, torch.Generator().manual_seed(7)).item() == pytest.approx(want.mean().item(),
                                                                                               rel=1e-6)


def test_a_weighting_is_one_entry(monkeypatch):
    """A new weighting registered in WEIGHTINGS under a config field multiplies the per-image loss by its w(t)."""
    s = make_schedule(ScheduleConfig(num_timesteps=10))
    cfg = TrainConfig(model=preset("tiny"), data=DataConfig(source="sklearn-digits", image_size=8))
    x0 = torch.zeros(4, 1, 8, 8)
    net = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    plain = build_loss(cfg, s)(net, x0, None, torch.Generator().manual_seed(1))
    monkeypatch.setitem(WEIGHTINGS, "hybrid_lambda", lambda schedule, t, value: (t + 1).float() * value)
    weighted = build_loss(cfg, s)(net, x0, None, torch.Generator().manual_seed(1))
    t = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(weighted, plain * ((t + 1).float() * cfg.hybrid_lambda))
    assert set(OBJECTIVES) == {"simple", "vlb", "hybrid"}
