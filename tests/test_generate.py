"""Sampling a run (sampling/generate.py and ddpm sample): loading, Samples, samples.json, the output folder."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY

from ddpm.cli.main import main


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_resampling_a_folder_drops_the_quality_report_of_the_old_samples(run, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(run), "-n", "2", "--sampler", "ddim", "--steps", "2", "--no-progress", "--out",
                 str(out)]) == 0
    assert main(["eval", "quality", str(out / "samples.npz")]) == 0
    assert (out / "samples_quality.json").is_file()
    (out / "notes.txt").write_text("mine")
    assert main(["sample", str(run), "-n", "2", "--sampler", "ddim", "--steps", "3", "--no-progress", "--out",
                 str(out)]) == 0
    assert not (out / "samples_quality.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert "step_0000003" in capsys.readouterr().out  # says which checkpoint it sampled


def test_samples_json_records_what_draws_the_same_images_again(run, tmp_path):
    from ddpm.sampling.generate import generate, load_run
    out = tmp_path / "s"
    assert main(["sample", str(run), "-n", "3", "--sampler", "ddim", "--steps", "4", "--eta", "0.5", "--seed", "7",
                 "--weights", "model", "--no-progress", "--out", str(out)]) == 0
    rec = json.loads((out / "samples.json").read_text())
    assert rec["checkpoint"].endswith("step_0000003") and rec["weights"] == "model" and rec["n"] == 3
    assert {k: rec[k] for k in ("sampler", "steps", "eta", "seed", "spacing", "variance")} == {
        "sampler": "ddim", "steps": 4, "eta": 0.5, "seed": 7, "spacing": "uniform",
        "variance": None}  # DDIM's noise: eta
    assert rec["device"] == "cpu" and rec["precision"] == "fp32"  # "auto", as resolved on this device
    settings = {k: v for k, v in rec.items() if k not in ("checkpoint", "weights", "n", "device")}
    again = generate(load_run(rec["checkpoint"], which=rec["weights"]), rec["n"], progress=False, **settings).images
    assert np.array_equal(again.permute(0, 2, 3, 1).numpy(), np.load(out / "samples.npz")["images"])


def test_the_default_sampler_records_its_analytic_variance_and_quadratic_spacing(run, tmp_path, monkeypatch):
    """With no sampler flag, a shortened Algorithm 2 takes the analytic variance on quadratically spaced steps
    (sampling/defaults.py); samples.json says so, and its settings draw the same images again.  (The tiny run's
    20-step schedule leaves most of the image at 0.8 T, where quadratic spacing starts, so the limit on that is
    lifted here; tests/test_analytic.py checks the limit.)"""
    from ddpm.core.respace import timestep_sequence
    from ddpm.sampling.generate import generate, load_run
    monkeypatch.setattr("ddpm.sampling.defaults.MAX_SIGNAL_AT_START", 1.0)
    out = tmp_path / "s"
    assert main(["sample", str(run), "-n", "2", "--steps", "6", "--no-progress", "--out", str(out)]) == 0
    rec = json.loads((out / "samples.json").read_text())
    assert {k: rec[k] for k in ("sampler", "steps", "spacing", "variance")} == {
        "sampler": "ddpm", "steps": 6, "spacing": "quadratic", "variance": "analytic"}
    loaded = load_run(rec["checkpoint"])
    assert not torch.equal(timestep_sequence(loaded.schedule, 6, "quadratic"),
                           timestep_sequence(loaded.schedule, 6, "uniform"))  # so the spacing shows in the images
    settings = {k: v for k, v in rec.items() if k not in ("checkpoint", "weights", "n", "device")}
    again = generate(loaded, rec["n"], progress=False, **settings).images
    assert np.array_equal(again.permute(0, 2, 3, 1).numpy(), np.load(out / "samples.npz")["images"])
    uniform = generate(loaded, rec["n"], progress=False, **{**settings, "spacing": "uniform"}).images
    assert not torch.equal(uniform, again)


def test_sampling_a_run_with_a_damaged_newest_checkpoint_names_the_older_one(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(["train", *TINY, "--run-dir", str(run_dir), "--steps", "2", "--checkpoint-every", "1"]) == 0
    newest = run_dir / "checkpoints" / "step_0000002" / "ema.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])
    capsys.readouterr()
    assert main(["sample", str(run_dir), "-n", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "step_0000002" in err and "the older" in err and "step_0000001 may be intact" in err
    assert len(err.splitlines()) == 1
    assert main(["sample", str(run_dir / "checkpoints" / "step_0000001"), "-n", "1", "--no-progress",
                 "--out", str(tmp_path / "s")]) == 0


def test_generate_returns_images_and_the_chain_of_the_first_samples(run):
    """Samples.images holds every sample; Samples.chain the frames of the first ``chain_samples`` from x_T (at the
    first kept step's t) to x_0 (t = 0), whose last frame is those samples' images; without chain_samples there is
    no chain."""
    from ddpm.core.respace import timestep_sequence
    from ddpm.sampling.generate import generate, load_run

    loaded = load_run(run)
    drawn = generate(loaded, 5, batch_size=2, sampler="ddim", steps=4, chain_samples=3, chain_every=2, progress=False)
    assert drawn.images.shape == (5, 1, 8, 8) and drawn.images.dtype == torch.uint8
    first_t = int(timestep_sequence(loaded.schedule, 4, "uniform")[-1]) + 1
    assert [t for t, _ in drawn.chain] == [first_t, int(timestep_sequence(loaded.schedule, 4, "uniform")[1]) + 1, 0]
    assert torch.equal(drawn.chain[-1][1], drawn.images[:3])
    alone = generate(loaded, 5, batch_size=5, sampler="ddim", steps=4, progress=False)
    assert alone.chain is None and torch.equal(alone.images, drawn.images)   # batch size changes nothing


def test_on_step_sees_every_step_with_its_predicted_x0(run):
    from ddpm.sampling.generate import generate, load_run

    seen = []
    generate(load_run(run), 2, sampler="ddpm", steps=5, progress=False,
             on_step=lambda s: seen.append((s.left, s.t, s.x0 is None, tuple(s.x.shape))))
    assert [s[0] for s in seen] == [5, 4, 3, 2, 1, 0] and seen[0][2] and not any(s[2] for s in seen[1:])
    assert seen[-1][1] == 0 and all(s[3] == (2, 1, 8, 8) for s in seen)
