"""Several EMA decays and post-hoc EMA end to end on the tiny run: --ema-decay D1,D2 with --weights ema:D, the
snapshots and their resume, ddpm ema writing a checkpoint folder ddpm sample reads, and the sweep's files."""
import json

import numpy as np
import torch
from conftest import TINY

from ddpm.cli.main import main
from ddpm.evaluation.classifier import DigitClassifier
from ddpm.evaluation.ema_sweep import ema_sweep
from ddpm.runs.checkpoint import latest_checkpoint, load_weights
from ddpm.sampling.generate import generate, load_run
from ddpm.training.ema import snapshots


def _train(run_dir, steps, *extra):
    return main(["train", *TINY, "--run-dir", str(run_dir), "--steps", str(steps), "--sample-every", "100", *extra])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_decay_of_several_equals_a_run_trained_with_that_decay_alone(tmp_path):
    """Decays 0.3 and 0.4 part from the warm-up min(D, (1 + n) / (10 + n)) at step 4, so 6 steps tell them apart.
    The EMA does not feed back into training, so the run with both decays trains the same weights as a run with
    either alone: its ema.safetensors is the first's, bit for bit, and --weights ema:0.4 loads the second's."""
    both, first, second = tmp_path / "both", tmp_path / "first", tmp_path / "second"
    assert _train(both, 6, "--ema-decay", "0.3,0.4") == 0
    assert _train(first, 6, "--ema-decay", "0.3") == 0
    assert _train(second, 6, "--ema-decay", "0.4") == 0
    ck = latest_checkpoint(both)
    assert sorted(p.name for p in ck.iterdir()) == ["analytic.json", "config.json", "ema.safetensors",
                                                    "ema_0.4.safetensors", "model.safetensors", "trainer.pt"]
    alone = sorted(p.name for p in latest_checkpoint(first).iterdir())
    assert alone == ["analytic.json", "config.json", "ema.safetensors", "model.safetensors", "trainer.pt"]  # as before
    saved = json.loads((first / "config.json").read_text())
    assert "extra_ema_decays" not in saved and "ema_snapshot_every" not in saved
    assert _same(load_weights(ck, "ema"), load_weights(latest_checkpoint(first), "ema"))
    assert not _same(load_weights(ck, "ema"), load_weights(ck, "ema_0.4"))
    for which, ref in (("ema:0.4", second), ("ema:0.3", first), ("ema", first)):
        got = {k: v.cpu() for k, v in load_run(both, which=which, device="cpu").model.state_dict().items()}
        want = {k: v.cpu() for k, v in load_run(ref, device="cpu").model.state_dict().items()}
        assert _same(got, want), which
    assert main(["sample", str(both), "--weights", "ema:0.5", "-n", "2", "--no-progress"]) == 2


def test_resume_with_snapshots_and_two_decays_equals_the_uninterrupted_run(tmp_path):
    """Stop at step 5 (a snapshot every 2 steps, so the stopped run's last-step snapshot is off the grid), resume
    to 8: every snapshot, the power EMAs and both decays' EMAs equal the run that never stopped."""
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--ema-decay", "0.3,0.4", "--ema-snapshot-every", "2", "--checkpoint-every", "5"]
    assert _train(full, 8, *common) == 0
    assert _train(part, 5, *common) == 0
    assert [s["step"] for s in snapshots(part)] == [2, 4, 5]
    assert main(["train", "--resume", str(part), "--steps", "8", "--no-progress"]) == 0
    a, b = snapshots(full), snapshots(part)
    assert [s["step"] for s in a] == [s["step"] for s in b] == [2, 4, 6, 8]
    for sa, sb in zip(a, b):
        assert _same(load_weights(sa["path"].parent, sa["path"].stem), load_weights(sb["path"].parent,
                                                                                     sb["path"].stem))
    for name in ("model", "ema", "ema_0.4", "power_ema"):
        assert _same(load_weights(latest_checkpoint(full), name), load_weights(latest_checkpoint(part), name)), name


def test_ddpm_ema_writes_a_checkpoint_that_ddpm_sample_draws_from(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 6, "--ema-snapshot-every", "2") == 0
    # a tracked length reconstructs to the tracked EMA the checkpoint holds (float32 rounding of the sum)
    assert main(["ema", str(run), "--sigma-rel", "0.05"]) == 0
    out = run / "ema" / "sigma_rel_0.050"
    tracked = load_weights(latest_checkpoint(run), "power_ema")
    rebuilt = load_weights(out, "ema")
    for k, v in rebuilt.items():
        torch.testing.assert_close(v, tracked[f"0.05/{k}"], rtol=1e-5, atol=1e-6)
    assert json.loads((out / "ema.json").read_text())["step"] == 6
    assert main(["sample", str(out), "-n", "3", "--no-progress", "--no-individual"]) == 0
    images = np.load(out / "samples" / "ddpm" / "samples.npz")["images"]
    assert images.shape == (3, 8, 8, 1)
    assert main(["ema", str(run), "--sigma-rel", "0.08"]) == 0  # an untracked length, from the snapshots
    assert not _same(load_weights(run / "ema" / "sigma_rel_0.080", "ema"), rebuilt)
    capsys.readouterr()
    assert main(["ema", str(run), "--sigma-rel", "0.08", "-n", "10"]) == 2
    assert "--num applies to --sweep" in capsys.readouterr().err  # refused before any work
    plain = tmp_path / "plain"
    assert _train(plain, 2) == 0
    assert main(["ema", str(plain), "--sigma-rel", "0.08"]) == 2
    err = capsys.readouterr().err
    assert "holds no EMA snapshots" in err and "--ema-snapshot-every" in err and len(err.splitlines()) == 1


def test_sweep_scores_every_length_and_the_fixed_emas_and_draws_the_figure(tmp_path):
    """The plumbing of ``ddpm ema --sweep`` with an untrained classifier (the metric itself is tested in
    test_quality.py) against a small made-up reference: one row per length and per fixed decay."""
    run_dir = tmp_path / "run"
    assert _train(run_dir, 6, "--ema-decay", "0.3,0.4", "--ema-snapshot-every", "3") == 0
    run = load_run(run_dir, device="cpu")
    torch.manual_seed(0)
    classifier = (DigitClassifier().eval(), {"key": "untrained", "test_accuracy": 0.0})

    def draw(r):
        return generate(r, 6, seed=3, sampler="ddim", steps=4).images, None
    reference = torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    record = ema_sweep(run, run_dir, (0.05, 0.12), draw, tmp_path / "out", classifier=classifier,
                       reference=reference, say=lambda _: None)
    assert [r["sigma_rel"] for r in record["posthoc"]] == [0.05, 0.12]
    assert [f["weights"] for f in record["fixed"]] == ["ema", "ema:0.4"]
    assert all(r["n"] == 6 and np.isfinite(r["fd"]) for r in record["posthoc"] + record["fixed"])
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["best_sigma_rel"] == record["best_sigma_rel"]
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
