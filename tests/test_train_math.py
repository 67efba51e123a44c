"""The training step's arithmetic against closed forms written out here: the learning-rate and EMA schedules, the
EMA update, gradient clipping and accumulation, Algorithm 1's t draw, the logged metric rows, the resumed VLB
state, and the L_hybrid / importance-sampling objective (Nichol & Dhariwal 2021, Secs. 3.1-3.3)."""
import math
import types

import pytest
import torch

from ddpm.core.likelihood import (
    ImportanceSampler,
    TrainingVLB,
    hybrid_loss,
    loss_vlb,
    vlb_terms,
)
from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.data.datasets import to_model_range
from ddpm.runs.rundir import read_metrics
from ddpm.training.rates import ema_decay_at, lr_at


def _trainer(tmp_path, steps=2, timesteps=20, **kw):
    """A Trainer of the tiny preset on 64 random 8x8 grey images (batch 8, T = ``timesteps``), run folder
    ``tmp_path / "run"`` (not made yet, so the trainer holds no lock until it runs)."""
    import numpy as np

    from ddpm.data.datasets import DataConfig
    from ddpm.model.unet import preset
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import Trainer
    data = tmp_path / "data.npy"
    if not data.exists():
        np.save(data, np.random.default_rng(0).integers(0, 256, (64, 8, 8), dtype=np.uint8))
    kw.setdefault("batch_size", 8)
    kw.setdefault("device", "cpu")  # the x0 and generators made here live on the CPU
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), model=preset("tiny"),
                      data=DataConfig(source=str(data), image_size=8), schedule=ScheduleConfig(num_timesteps=timesteps),
                      steps=steps, progress=False, **kw)
    return Trainer(cfg)


def _constant_network(value=0.3):
    """A stand-in for the U-Net that records what it is called with and predicts eps = ``value`` everywhere."""
    seen = {}

    def net(x_t, t, y=None):
        seen["x_t"], seen["t"] = x_t.detach().clone(), t.clone()
        return torch.full_like(x_t, value)
    return net, seen


# ------------------------------------------------------------------------------------ learning rate and EMA

def test_lr_schedule_matches_warmup_then_cosine_closed_form():
    """lr_n = lr (n + 1) / W for n < W; then lr (constant) or lr (1 + cos(pi p)) / 2, p = min(1, (n - W) / (S - W))
    (SGDR, Loshchilov & Hutter 2017, without restarts): 0 at the last step S and after it."""
    lr, W, S = 2e-3, 7, 47
    for n in range(0, 60):
        warm = lr * (n + 1) / W
        p = min(1.0, (n - W) / (S - W))
        assert lr_at(n, lr, W) == pytest.approx(warm if n < W else lr, rel=1e-12), n
        want = warm if n < W else lr * (1 + math.cos(math.pi * p)) / 2
        assert lr_at(n, lr, W, "cosine", S) == pytest.approx(want, rel=1e-12, abs=1e-18), n
    assert lr_at(0, lr, 0, "cosine", 10) == lr and lr_at(5, lr, 0, "cosine", 10) == pytest.approx(lr / 2)
    assert lr_at(S + 13, lr, W, "cosine", S) == pytest.approx(0.0, abs=1e-18)   # stays at 0 past the end
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_at(W, lr, W, "linear", S)


def test_ema_decay_warmup_closed_form():
    """d_n = min(d, (1 + n) / (10 + n)): 0.1 at n = 0, and the cap d takes over at n = (10 d - 1) / (1 - d)."""
    for d in (0.5, 0.9, 0.9999):
        for n in (0, 1, 2, 5, 8, 9, 80, 81, 10**5):
            assert ema_decay_at(n, d) == pytest.approx(min(d, (1 + n) / (10 + n)), rel=1e-15)
    assert ema_decay_at(7, 0.5) == pytest.approx(8 / 17) and ema_decay_at(8, 0.5) == 0.5   # 9/18 = 0.5 exactly
    assert ema_decay_at(81, 0.9) == 0.9 and ema_decay_at(80, 0.9) == pytest.approx(81 / 90)


def test_ema_update_uses_the_configured_cap_after_warm_up(tmp_path):
    """theta_ema <- d theta_ema + (1 - d) theta with d = min(ema_decay, (1 + n)/(10 + n)); at step n = 100 and
    ema_decay 0.5 the warm-up value 101/110 is above the cap, so d = 0.5 (the cap from the config, not 0.9999)."""
    tr = _trainer(tmp_path, ema_decay=0.5)
    tr.step = 100
    before = [p.detach().clone() for p in tr.ema.parameters()]
    tr.train_step()
    for e, p, p0 in zip(tr.ema.parameters(), tr.model.parameters(), before):
        assert torch.allclose(e, 0.5 * p0 + 0.5 * p.detach(), rtol=0, atol=1e-7)
    assert tr.step == 101
    # inside the warm-up (n = 3) the warm-up value 4/13 < 0.5 applies
    tr.step = 3
    before = [p.detach().clone() for p in tr.ema.parameters()]
    tr.train_step()
    for e, p, p0 in zip(tr.ema.parameters(), tr.model.parameters(), before):
        assert torch.allclose(e, 4 / 13 * p0 + 9 / 13 * p.detach(), rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------ clipping and accumulation

@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_gradients_are_clipped_to_the_norm_before_the_optimizer_step(tmp_path, clip):
    """clip_grad_norm_: the optimizer sees g min(1, c / ||g||) (torch adds 1e-6 to the norm), and the reported norm
    is the pre-clip ||g|| = sqrt(sum of every squared gradient entry), computed here in float64."""
    tr = _trainer(tmp_path, grad_clip=clip)
    tr.accumulate_gradients()
    raw = [p.grad.detach().clone() for p in tr.model.parameters()]
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in raw))
    seen = []
    step = tr.optimizer.step

    def recording_step(*a, **k):
        seen.append([p.grad.detach().clone() for p in tr.model.parameters()])
        return step(*a, **k)
    tr.optimizer.step = recording_step
    reported = tr.apply_gradients()
    assert float(reported) == pytest.approx(norm, rel=1e-5)
    assert norm > 1e-2  # so that c = 1e-3 really clips
    scale = min(1.0, clip / (norm + 1e-6))
    assert len(seen) == 1
    for g, g_raw in zip(seen[0], raw):
        assert torch.allclose(g, g_raw * scale, rtol=1e-5, atol=1e-12)
    clipped = math.sqrt(sum(float(g.double().pow(2).sum()) for g in seen[0]))
    assert clipped == pytest.approx(min(clip, norm), rel=1e-4)


def test_gradient_accumulation_averages_the_micro_batch_gradients(tmp_path):
    """With grad_accum = k the step's gradient is (1/k) sum_i grad L_i over k consecutive micro-batches, the gradient
    of the mean loss over the k * batch_size images, and the returned loss is that mean.  The reference replays the
    same micro-batches (same data position and t/eps generator state) one at a time."""
    tr = _trainer(tmp_path, grad_accum=3, batch_size=4)
    gen, data = tr.gen.get_state(), tr.batches.state_dict()
    total = tr.accumulate_gradients()
    acc = [p.grad.detach().clone() for p in tr.model.parameters()]
    tr.optimizer.zero_grad(set_to_none=True)
    tr.gen.set_state(gen)
    tr.batches.load_state_dict(data)
    losses, grads = [], []
    for _ in range(3):
        loss = tr._loss(next(tr.batches))
        grads.append(torch.autograd.grad(loss, list(tr.model.parameters()), allow_unused=True))
        losses.append(loss.item())
    assert total.item() == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert len(set(losses)) == 3   # three different micro-batches
    for i, g in enumerate(acc):
        want = sum(gs[i] for gs in grads) / 3
        assert torch.allclose(g, want, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------- Algorithm 1's t

def test_trainer_draws_every_timestep_uniformly(tmp_path):
    """Algorithm 1 line 3 inside the trainer: t ~ Uniform{1..T}, 0-based 0..T-1, T = 4.  With n = 4000 draws each
    frequency has binomial SE sqrt(p (1 - p) / n) = 0.0068; tolerance 5 SE.  The draw comes from the trainer's
    own generator, so the same generator state gives the same t."""
    tr = _trainer(tmp_path, timesteps=4)
    net, seen = _constant_network()
    tr._network = net
    x0 = torch.zeros(4000, 1, 8, 8)
    state = tr.gen.get_state()
    tr._loss(x0)
    t = seen["t"]
    assert sorted(t.unique().tolist()) == [0, 1, 2, 3]
    freq = torch.bincount(t, minlength=4).double() / len(t)
    assert (freq - 0.25).abs().max().item() < 5 * math.sqrt(0.25 * 0.75 / len(t))
    tr.gen.set_state(state)
    tr._loss(x0)
    assert torch.equal(seen["t"], t)


def test_trainer_applies_importance_weights_to_the_vlb(tmp_path):
    """With importance sampling the trainer's loss is mean_i w_i L_vlb(x0_i, t_i), w = 1 / (T p_t), p_t from the
    sampler's history (Nichol & Dhariwal 2021, eq. 18), not the unweighted mean."""
    T = 5
    tr = _trainer(tmp_path, timesteps=T, loss="vlb", importance_sampling=True)
    sampler = tr.loss_fn.importance
    for _ in range(sampler.history):
        sampler.update(torch.arange(T), torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5]))
    p = sampler.probs()
    assert p.max() / p.min() > 10                     # far from uniform
    net, seen = _constant_network()
    tr._network = net
    g = torch.Generator().manual_seed(0)
    x0 = to_model_range(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g))
    loss = tr._loss(x0)
    t = seen["t"]
    per = loss_vlb(tr.schedule, torch.full_like(x0, 0.3), x0, seen["x_t"].float(), t, "fixed-large")
    w = 1.0 / (T * p[t])
    assert loss.item() == pytest.approx((w * per.double()).mean().item(), rel=1e-5)
    assert abs(loss.item() - per.mean().item()) > 1e-3 * abs(per.mean().item())


# ---------------------------------------------------------------------------------------- the metric rows

def _clocked_run(tmp_path, monkeypatch, **kw):
    """Run a trainer under a fake clock that advances 1 s per optimisation step and 100 s per checkpoint save;
    returns (metric rows, per-step losses, per-step gradient norms, the trainer)."""
    import ddpm.training.log as log_mod
    import ddpm.training.trainer as train_mod
    clock = [1000.0]
    monkeypatch.setattr(log_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], time=lambda: 0.0))
    monkeypatch.setattr(train_mod, "plot_loss_curve", lambda *a, **k: None)
    tr = _trainer(tmp_path, sample_every=100, preview_samples=0, **kw)
    losses, norms = [], []
    step, save = tr.train_step, tr.save

    def timed_step():
        clock[0] += 1.0
        loss, norm = step()
        losses.append(loss.item())
        norms.append(float(norm))
        return loss, norm

    def slow_save():
        save()
        clock[0] += 100.0
    tr.train_step, tr.save = timed_step, slow_save
    tr.run()
    return read_metrics(tmp_path / "run" / "metrics.jsonl"), losses, norms, tr


def test_metric_rows_average_the_interval_and_count_images_per_second(tmp_path, monkeypatch):
    """Each row logs the mean loss of the steps since the previous row and img/s = images in those steps / their
    time, with batch_size * grad_accum * world_size images a step; time spent saving a checkpoint is not counted.
    At 1 s per step, img/s must be 8 * 2 / 1 = 16 however long the saves (100 s each) take."""
    rows, losses, norms, tr = _clocked_run(tmp_path, monkeypatch, steps=4, grad_accum=2, log_every=2,
                                           checkpoint_every=2, warmup_steps=2)
    assert [r["step"] for r in rows] == [2, 4]
    for r, lo in zip(rows, (0, 2)):
        assert r["loss"] == pytest.approx(sum(losses[lo:lo + 2]) / 2, rel=1e-6)
        assert r["img_per_s"] == pytest.approx(16.0, rel=1e-9)
        assert r["grad_norm"] == pytest.approx(norms[lo + 1], rel=1e-6)
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, tr.config.lr, 2), rel=1e-12)
        assert r["global_batch_size"] == 16 and r["world_size"] == 1


def test_img_per_s_when_a_checkpoint_falls_between_log_steps(tmp_path, monkeypatch):
    """Rows every 3 steps, a checkpoint at step 2: the row at step 3 covers 3 steps of 8 images in 3 s of training."""
    rows, _, _, _ = _clocked_run(tmp_path, monkeypatch, steps=3, log_every=3, checkpoint_every=2)
    assert [r["step"] for r in rows] == [3]
    assert rows[0]["img_per_s"] == pytest.approx(8.0, rel=1e-9)


# ---------------------------------------------------------------------------------------------- resume

def test_resume_restores_the_importance_sampler_history_and_random_streams(tmp_path):
    """The importance sampler's loss history is state a resumed run depends on (it sets p_t): it comes back from
    the checkpoint exactly, as do the step, the t/eps generator and the data position."""
    tr = _trainer(tmp_path, steps=4, timesteps=5, loss="vlb", importance_sampling=True)
    for _ in range(3):
        tr.train_step()
    tr.save()
    assert int(tr.loss_fn.importance.counts.sum()) == 3 * 8
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import Trainer
    again = Trainer(TrainConfig.from_dict(tr.config.to_dict()), resume=True)
    assert again.step == 3
    assert torch.equal(again.loss_fn.importance.losses, tr.loss_fn.importance.losses)
    assert torch.equal(again.loss_fn.importance.counts, tr.loss_fn.importance.counts)
    assert torch.equal(again.gen.get_state(), tr.gen.get_state())
    assert again.batches.state_dict() == tr.batches.state_dict()
    again.close()


# ------------------------------------------------------------------------------- L_hybrid and importance

def _toy(variance, n=6, T=20, seed=0):
    s = make_schedule(ScheduleConfig(num_timesteps=T, beta_end=0.2))
    g = torch.Generator().manual_seed(seed)
    x0 = to_model_range(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g))
    t = torch.arange(n) * (T // n)
    noise = torch.randn(x0.shape, generator=g)
    ab = s.alpha_bars[t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    ch = 2 if variance == "learned-range" else 1
    out = (0.3 * torch.randn(n, ch, 4, 4, generator=g)).requires_grad_()
    return s, x0, t, noise, x_t, out


@pytest.mark.parametrize("lam", [0.01, 0.25])
def test_hybrid_loss_is_simple_plus_lambda_times_t_vlb_terms(lam):
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. 16), L_vlb = T L_{t-1} per image, with the
    lambda actually passed (through hybrid_loss and through the trainer's TrainingVLB)."""
    s, x0, t, noise, x_t, out = _toy("learned-range")
    simple = ((out[:, :1] - noise) ** 2).flatten(1).mean(1)
    want = simple + lam * 20 * vlb_terms(s, out, x0, x_t, t, "learned-range")
    assert torch.allclose(hybrid_loss(s, out, noise, x0, x_t, t, "learned-range", lam=lam), want, rtol=1e-5)
    obj = TrainingVLB(s, "hybrid", "learned-range", hybrid_lambda=lam)
    assert torch.allclose(obj.per_image(out, noise, x0, x_t, t), want, rtol=1e-5)


def test_hybrid_with_fixed_variance_takes_no_gradient_from_l_vlb():
    """The stop-gradient on the mean (Sec. 3.1): with a fixed variance L_vlb has no other input, so L_hybrid's
    gradient is exactly L_simple's, 2 (eps_theta - eps) / D per image, while its value still includes lambda L_vlb."""
    s, x0, t, noise, x_t, out = _toy("fixed-large")
    h = hybrid_loss(s, out, noise, x0, x_t, t, "fixed-large", lam=0.5)
    (g,) = torch.autograd.grad(h.sum(), out)
    assert torch.allclose(g, 2 * (out.detach() - noise) / 16, rtol=1e-6, atol=1e-9)
    vlb = loss_vlb(s, out, x0, x_t, t, "fixed-large")
    assert vlb.abs().min() > 0 and torch.allclose(h, ((out - noise) ** 2).flatten(1).mean(1) + 0.5 * vlb, rtol=1e-5)


def test_importance_sampler_stays_uniform_until_every_timestep_has_its_history():
    """Sec. 3.3: t is uniform, and every weight 1/(T p) = 1, until *each* of the T timesteps has ``history`` losses."""
    T = 4
    s = ImportanceSampler(T, history=2, uniform_prob=0.0)
    for _ in range(2):
        s.update(torch.tensor([0, 1, 2]), torch.tensor([100.0, 1.0, 1.0]))
    s.update(torch.tensor([3]), torch.tensor([1.0]))
    assert not s.warmed_up
    assert torch.equal(s.probs(), torch.full((T,), 0.25, dtype=torch.float64))
    _, w = s.sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(16))
    s.update(torch.tensor([3]), torch.tensor([1.0]))
    assert s.warmed_up and s.probs().tolist() == pytest.approx([100 / 103, 1 / 103, 1 / 103, 1 / 103], rel=1e-12)


def test_training_objective_records_unweighted_losses_with_a_history_of_ten():
    """The history holds L_t itself (p_t is proportional to sqrt(E[L_t^2]) of the unweighted terms), not w_t L_t;
    it keeps the last 10 values per timestep and mixes in 0.1% uniform, as improved-diffusion's
    LossSecondMomentResampler does."""
    s, x0, t, noise, x_t, out = _toy("learned-range")
    obj = TrainingVLB(s, "vlb", "learned-range", importance_sampling=True)
    assert obj.importance.history == 10 and obj.importance.uniform_prob == 1e-3
    w = torch.linspace(0.5, 3.0, len(t))
    per = obj.per_image(out, noise, x0, x_t, t).detach().double()
    loss = obj.loss(out, noise, x0, x_t, t, w)
    assert loss.item() == pytest.approx((per * w.double()).mean().item(), rel=1e-6)
    assert torch.allclose(obj.importance.losses[t, 0], per, rtol=1e-12)   # t are distinct: one value each
    assert obj.importance.counts[t].tolist() == [1] * len(t)


# ---------------------------------------------------------------------------------- fp16 and its gradient scaler

def test_fp16_step_is_scaled_and_matches_the_fp32_step(tmp_path):
    """fp16 autocast trains through a GradScaler: the backward pass sees the loss times the scale (65536 at the
    start), and unscaling before clipping gives back the fp32 step's gradients.  The tolerance: the forward pass in
    fp16 has a relative rounding of 2^-11 ~ 5e-4 per operation; over the tiny U-Net's few dozen operations the
    gradients agree to about 1e-2 (measured 2e-3 relative in norm)."""
    grads, norms = {}, {}
    for precision in ("fp32", "fp16"):
        (tmp_path / precision).mkdir()
        tr = _trainer(tmp_path / precision, precision=precision, compile="off")
        assert tr.scaler.is_enabled() == (precision == "fp16")
        tr.accumulate_gradients()
        raw = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
        if precision == "fp16":
            assert tr.scaler.get_scale() == 2.0 ** 16
            scaled_norm = raw.norm()
        tr.scaler.unscale_(tr.optimizer)
        grads[precision] = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
        norms[precision] = grads[precision].norm()
        tr.close()
    assert scaled_norm == pytest.approx(float(norms["fp16"]) * 2 ** 16, rel=1e-3)   # the backward was scaled
    assert float((grads["fp16"] - grads["fp32"]).norm() / norms["fp32"]) < 1e-2
    assert torch.nn.functional.cosine_similarity(grads["fp16"], grads["fp32"], dim=0) > 0.9999


def test_fp16_scaler_state_is_saved_and_resumed(tmp_path):
    tr = _trainer(tmp_path, precision="fp16", compile="off", steps=2, checkpoint_every=2, preview_samples=0)
    tr.run()
    from ddpm.runs.checkpoint import load_checkpoint
    saved = load_checkpoint(tmp_path / "run")["trainer"]["grad_scaler"]
    assert saved["scale"] == tr.scaler.get_scale()
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import Trainer
    again = Trainer(TrainConfig.from_dict({**tr.config.to_dict(), "steps": 3}), resume=True)
    assert again.scaler.get_scale() == tr.scaler.get_scale() and again.step == 2
    again.close()
