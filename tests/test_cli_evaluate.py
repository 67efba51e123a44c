"""`ddpm eval` and `ddpm study` end to end on a tiny run, and the one-line errors of the CLI."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY

from ddpm.cli.main import main
from ddpm.evaluation.study import LEARNED_VARIANT, NOISE_VARIANTS, pixel_variance


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_eval_nll_full_and_quick(run, capsys):
    assert main(["eval", "nll", str(run), "-n", "6", "--no-progress", "--out", str(run / "full")]) == 0
    full = json.loads((run / "full" / "nll.json").read_text())
    assert (run / "full" / "nll_terms.png").is_file()
    assert main(["eval", "nll", str(run), "-n", "6", "--quick", "5", "--no-progress", "--out", str(run / "q")]) == 0
    quick = json.loads((run / "q" / "nll.json").read_text())
    assert full["num_images"] == quick["num_images"] == 6 and full["mode"] == "full" and quick["mode"] == "quick"
    # eq. 5: the bound is L_T + the T - 1 KL terms + L_0, and the per-term table adds up to the two last parts
    assert full["bpd"] == pytest.approx(full["prior_bpd"] + full["kl_bpd"] + full["decoder_bpd"], rel=1e-9)
    assert len(full["terms_mean_bpd"]) == 20
    assert sum(full["terms_mean_bpd"]) == pytest.approx(full["kl_bpd"] + full["decoder_bpd"], rel=1e-6)
    # the stratified estimate lands on the full sum within its standard errors (5 SE)
    se = (full["bpd_stderr"] ** 2 + quick["bpd_stderr"] ** 2) ** 0.5
    assert abs(quick["bpd"] - full["bpd"]) < 5 * se and quick["prior_bpd"] == pytest.approx(full["prior_bpd"])
    assert "bits/dim" in capsys.readouterr().out


def test_study_noise_writes_picture_and_one_row_per_variant(run, capsys):
    out = run / "study"
    assert main(["study", "noise", str(run), "-n", "4", "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "noise_study.json").read_text())
    # what ddpm sample draws (its own sigma_t: analytic), and the paper's variances and none from the same x_T
    assert {k: (r["variance"], r["sigma_scale"]) for k, r in res.items()} == {
        "sigma^2 analytic (ddpm sample's)": ("analytic", 1.0), **NOISE_VARIANTS}
    assert {r["steps"] for r in res.values()} == {20}  # the default's steps (at most T of the tiny run)
    assert all(r["pixel_variance_mean"] >= 0 for r in res.values()) and (out / "noise_study.png").is_file()
    assert "pixel var" in capsys.readouterr().out


def test_pixel_variance_closed_form():
    imgs = torch.tensor([[[[0, 255], [0, 255]]], [[[7, 7], [7, 7]]]], dtype=torch.uint8)
    v = pixel_variance(imgs)
    assert v[0].item() == pytest.approx(1 / 3)  # unbiased variance of (0, 1, 0, 1) = 1/3
    assert v[1].item() == 0


def test_eval_fid_says_what_is_missing_in_one_line(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_INCEPTION_WEIGHTS", str(tmp_path / "absent.pth"))
    samples = tmp_path / "s.npz"
    np.savez(samples, images=np.zeros((4, 8, 8, 1), dtype=np.uint8))
    assert main(["eval", "fid", str(samples), "--ref", "sklearn-digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "torch-fidelity" in err or "absent.pth" in err


def test_eval_fid_checks_what_it_needs_before_drawing_samples(run, tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setattr(sys.modules["ddpm.cli.evaluate"], "generate",
                        lambda *a, **k: pytest.fail("sampled before the checks"))
    monkeypatch.setenv("DDPM_INCEPTION_WEIGHTS", str(tmp_path / "absent.pth"))
    assert main(["eval", "fid", str(run), "--ref", "digits", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "MISSING_DIR"], "MISSING_DIR"),
    (["train", "--image-size", "30"], "30"),
    (["train", "--ema-decay", "1.5"], "error: --ema-decay must lie in [0, 1]"),
    (["train", "--schedule", "cosine", "--beta-end", "0.01"], "the cosine one has no such ends"),
    (["sample", "MISSING_RUN"], "MISSING_RUN"),
    (["sample", "MISSING_RUN", "--cuda-graph", "--device", "cpu"], "--cuda-graph"),
    (["eval", "nll", "MISSING_RUN"], "MISSING_RUN"),
    (["eval", "quality", "MISSING_SAMPLES.npz"], "MISSING_SAMPLES"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--run-dir", str(tmp_path / "r")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work: no run folder was made


@pytest.mark.parametrize("extra, needle", [
    (["--sampler", "ddim", "--steps", "21"], "[1, 20]"),      # the tiny run has T = 20
    (["--sampler", "dpm++2m", "--steps", "25"], "[1, 20]"),
    (["--eta", "0.5"], "--sampler ddim"),                     # eta with the default ancestral sampler
    (["--variance", "learned-range"], "cannot be sampled with --variance learned-range"),  # trained fixed-large
    (["--device", "nodevice"], "not a device name"),
    (["--sampler", "ddim", "--steps", "5", "--variance", "fixed-small"], "for --sampler ddpm only"),
    (["--chain", "2"], "--chain 2: only -n 1 samples are drawn"),
    (["--spacing", "quadratic"], "ddpm here runs all T"),              # T = 20: the default 100 steps are all T
])
def test_bad_sampler_settings_are_one_line_and_write_nothing(run, extra, needle, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", str(run), "-n", "1", "--no-progress", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["sample", "RUN", "-n", "0"], "-n/--num: must be >= 1, got 0"),
    (["sample", "RUN", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["sample", "RUN", "--chain", "-1"], "--chain: must be >= 0"),
    (["eval", "nll", "RUN", "--quick", "0"], "--quick: must be >= 1"),
    (["eval", "quality", "RUN", "-n", "1"], "-n/--num: must be >= 2"),
    (["study", "noise", "RUN", "-n", "zero"], "expected a whole number, got 'zero'"),
    (["train", "--lr", "-1"], "--lr: must be > 0"),
    (["train", "--warmup-steps", "-1"], "--warmup-steps: must be >= 0"),
    (["train", "--steps", "0"], "--steps: must be >= 1"),
])
def test_bad_numbers_are_refused_while_parsing(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    # a T = 20 run
    (["eval", "quality", "RUN", "--sampler", "ddim"], "the sampler's default is 50; pass --steps 20 or fewer"),
    (["eval", "quality", "RUN", "--sampler", "ddpm", "--steps", "21"], "--steps must lie in [1, 20]"),
    (["eval", "quality", "ONE.npz"], "holds 1 image"),
    (["eval", "quality", "RUN", "--spacing", "quadratic"], "ddpm here runs all T"),  # the default 100 steps: all T
    (["eval", "quality", "ONE.npz", "--spacing", "uniform"], "--spacing uniform applies to samples drawn from a run"),
])
def test_eval_and_study_refuse_what_they_cannot_measure_in_one_line(run, argv, needle, tmp_path, capsys):
    np.savez(tmp_path / "ONE.npz", images=np.zeros((1, 32, 32), dtype=np.uint8))
    argv = [str(run) if a == "RUN" else str(tmp_path / a) if a.endswith(".npz") else a for a in argv]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_eval_nll_of_a_folder_run_needs_held_out_images(tmp_path, capsys):
    imgs = np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "train.npy", imgs[:12])
    np.save(tmp_path / "held.npy", imgs[12:])
    run = tmp_path / "run"
    assert main(["train", *TINY[4:], "--preset", "tiny", "--data", str(tmp_path / "train.npy"), "--run-dir", str(run),
                 "--steps", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "nll", str(run), "--no-progress", "--quick", "2"]) == 2
    assert "--data HELD_OUT_IMAGES" in capsys.readouterr().err
    assert main(["eval", "nll", str(run), "--no-progress", "--quick", "2", "--data", str(tmp_path / "held.npy"),
                 "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "on 4 images: " in out and "held.npy, all split" in out
    # without --out, another source's bound gets a folder of its own beside the run's own eval/nll.json
    assert main(["eval", "nll", str(run), "--no-progress", "--quick", "2", "--data", str(tmp_path / "held.npy")]) == 0
    assert (run / "eval" / "data_held" / "nll.json").is_file() and not (run / "eval" / "nll.json").exists()


def test_study_noise_needs_two_samples_only_where_it_measures_fd(run, tmp_path):
    from dataclasses import replace

    from ddpm.evaluation.study import measures_quality
    from ddpm.runs.config import TrainConfig
    assert measures_quality(TrainConfig()) and not measures_quality(replace(TrainConfig(), data=replace(
        TrainConfig().data, source="sklearn-digits")))
    # the tiny run is 8x8 scikit-learn digits: no FD, so one sample per variant is fine
    assert main(["study", "noise", str(run), "-n", "1", "--no-progress", "--out", str(tmp_path / "s")]) == 0


def test_quick_beyond_the_runs_strata_is_one_line(run, capsys):
    assert main(["eval", "nll", str(run), "--quick", "20", "--no-progress"]) == 2  # the tiny run has T = 20
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "1 to T - 1 = 19" in err and len(err.splitlines()) == 1



def test_learned_variance_needs_a_loss_that_trains_it(tmp_path, capsys):
    from ddpm.runs.config import TrainConfig
    with pytest.raises(ValueError, match="pass --loss hybrid"):
        TrainConfig(variance="learned-range", loss="simple")
    assert TrainConfig(variance="learned-range", loss="vlb").model.out_channels == 2
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "r"), "--variance", "learned-range"]) == 2
    assert "--loss hybrid" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_no_preview_samples_trains_without_preview_grids(tmp_path):
    from ddpm.data.datasets import DataConfig
    from ddpm.model.unet import preset
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import train
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), model=preset("tiny"), steps=2, batch_size=4, sample_every=1,
                      preview_samples=0, progress=False, data=DataConfig(source="sklearn-digits", image_size=8))
    run = train(cfg)
    assert (run / "loss.png").is_file() and not (run / "previews").exists()



def test_bad_data_files_are_refused_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 4), dtype=np.uint8))
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((10, 8, 8), dtype=np.uint8))
    cut = tmp_path / "cut.npz"  # the first half of a good .npz: not a zip file any more
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.npy"
    text.write_text("not an array\n")
    for src, needle in ((empty, "empty"), (corrupt, "a.png"), (wrong, "wrong.npy"), (cut, "cut.npz"),
                        (text, "not a NumPy array file")):
        assert main(["train", "--data", str(src), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "r").exists()


def test_trained_model_has_a_much_lower_bound_than_untrained(tmp_path):
    """Training must buy likelihood: after 150 steps on 8x8 digits the full bound in bits/dim falls well below the
    untrained network's (which predicts eps = 0 everywhere, its last conv being zero).  T = 20 with betas up to
    0.5 so that x_T is close to N(0, I) and L_T (which no network can change) is negligible (0.001 bits/dim)."""
    from ddpm.core.likelihood import calc_bpd_full
    from ddpm.core.schedule import ScheduleConfig
    from ddpm.data.datasets import DataConfig, load_images, to_model_range
    from ddpm.model.unet import preset
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import Trainer

    cfg = TrainConfig(run_dir=str(tmp_path), model=preset("tiny", base_channels=8), steps=150, lr=3e-3,
                      warmup_steps=10, schedule=ScheduleConfig(num_timesteps=20, beta_start=1e-3, beta_end=0.5),
                      data=DataConfig(source="sklearn-digits", image_size=8), batch_size=32, progress=False)
    tr = Trainer(cfg)
    x0 = to_model_range(load_images(DataConfig(source="sklearn-digits", image_size=8, split="test"))[:64])

    def bound(model):
        model.eval()
        with torch.no_grad():
            res = calc_bpd_full(lambda x, t: model(x, t), tr.schedule, x0, generator=torch.Generator().manual_seed(0))
        return res.total_bpd.mean().item()

    before = bound(tr.model)
    for _ in range(cfg.steps):
        tr.train_step()
    after = bound(tr.model)
    # measured: 13.09 -> 6.06 bits/dim; 0.6 leaves room for other seeds and CPUs, while a trainer that does not
    # learn (no change) or barely learns fails
    assert after < 0.6 * before, (before, after)


def test_hybrid_learned_range_run_trains_samples_and_evaluates(tmp_path):
    run = tmp_path / "hyb"
    assert main(["train", *TINY, "--run-dir", str(run), "--steps", "3", "--loss", "hybrid",
                 "--variance", "learned-range", "--importance-sampling"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["out_channels"] == 2 and cfg["variance"] == "learned-range"
    assert main(["sample", str(run), "-n", "2", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert main(["eval", "nll", str(run), "-n", "4", "--quick", "4", "--no-progress"]) == 0
    # the noise study samples the eps half with each fixed variance, and the learned variance besides
    assert main(["study", "noise", str(run), "-n", "2", "--no-progress", "--out", str(tmp_path / "st")]) == 0
    res = json.loads((tmp_path / "st" / "noise_study.json").read_text())
    assert {k: (r["variance"], r["sigma_scale"]) for k, r in res.items()} == {
        "sigma^2 analytic (ddpm sample's)": ("analytic", 1.0), **NOISE_VARIANTS, **LEARNED_VARIANT}


def test_eval_quality_of_an_image_folder_writes_beside_it(tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    assert main(["eval", "quality", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.png" for i in range(4)]  # nothing added
    saved = json.loads((tmp_path / "mine_eval" / "quality.json").read_text())
    assert saved["n"] == 4 and "mine_eval" in capsys.readouterr().out


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(run, tmp_path, capsys, monkeypatch):
    import sys
    for where in ("ddpm.sampling.generate", "ddpm.cli.evaluate"):
        monkeypatch.setattr(sys.modules[where], "generate", lambda *a, **k: pytest.fail("sampled before check"))
    monkeypatch.setattr(sys.modules["ddpm.cli.evaluate"], "run_nll",
                        lambda *a, **k: pytest.fail("evaluated before check"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv in (["sample", str(run), "-n", "2"], ["eval", "nll", str(run), "-n", "2"],
                 ["eval", "quality", str(run), "--steps", "2"], ["study", "noise", str(run), "-n", "2"]):
        assert main([*argv, "--no-progress", "--out", str(a_file / "sub")]) == 2
        err = capsys.readouterr().err.strip().splitlines()  # a note may come first, then the one error line
        assert err[-1].startswith("error: --out ") and "cannot write there" in err[-1]
        assert sum(line.startswith("error") for line in err) == 1 and not (a_file / "sub").exists()



def test_eval_quality_of_two_samples_files_in_one_folder_keeps_two_reports(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", images=rng.integers(0, 256, (4, 32, 32), dtype=np.uint8))
        assert main(["eval", "quality", str(tmp_path / f"{name}.npz")]) == 0
    assert (tmp_path / "a_quality.json").is_file() and (tmp_path / "b_quality.json").is_file()


def test_ctrl_c_says_what_is_left_to_resume(tmp_path, capsys, monkeypatch):
    import sys

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    run_dir = tmp_path / "r"
    assert main(["train", *TINY, "--run-dir", str(run_dir), "--steps", "2"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys.modules["ddpm.cli.train"], "train", interrupted)
    assert main(["train", "--resume", str(run_dir), "--steps", "4"]) == 130
    err = capsys.readouterr().err
    assert "step_0000002 is intact" in err and f"ddpm train --resume {run_dir}" in err
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "fresh"), "--steps", "2"]) == 130
    assert "before the first checkpoint; nothing to resume" in capsys.readouterr().err
    import sys
    monkeypatch.setattr(sys.modules["ddpm.sampling.generate"], "generate", interrupted)
    assert main(["sample", str(run_dir), "-n", "1", "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_resume_says_where_it_goes_on_and_when_there_is_nothing_to_do(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(["train", *TINY, "--run-dir", str(run_dir), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "already at step 2 of 2; nothing to train" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--steps", "3"]) == 0
    assert f"resuming {run_dir} from step 2 of 3" in capsys.readouterr().out


def test_flag_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "-5"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "error: argument --steps: must be >= 1, got -5 (see ddpm train --help)"



def test_a_warm_up_as_long_as_the_run_is_pointed_out(tmp_path):
    with pytest.warns(UserWarning, match="--warmup-steps 2 is not below --steps 2: the learning rate never reaches"):
        assert main(["train", *TINY, "--run-dir", str(tmp_path / "r"), "--steps", "2", "--warmup-steps", "2"]) == 0


def test_eval_quality_of_the_current_folder_writes_beside_it(tmp_path, monkeypatch):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    monkeypatch.chdir(folder)
    assert main(["eval", "quality", "."]) == 0
    assert (tmp_path / "imgs_eval" / "quality.json").is_file()


def test_study_noise_says_an_fd_from_few_samples_is_rough(run, tmp_path, capsys, monkeypatch):
    import sys
    study = sys.modules["ddpm.cli.evaluate"]  # the names the command calls
    monkeypatch.setattr(study, "measures_quality", lambda cfg: True)   # as for a grey 32x32 digits run
    monkeypatch.setattr(study, "noise_study", lambda *a, **k: {})      # the note comes before any sampling
    assert main(["study", "noise", str(run), "-n", "8", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "note: -n 8: an FD from so few samples per variant is rough" in capsys.readouterr().err
    assert main(["study", "noise", str(run), "-n", "64", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "rough" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, spacing", [
    ([], "quadratic"),                                 # the commands' default: analytic variance, quadratic steps
    (["--spacing", "uniform"], "uniform"),
    (["--variance", "fixed-large"], "uniform"),        # the sampler's own
])
def test_eval_quality_draws_with_the_spacing_asked_for(run, extra, spacing, tmp_path, monkeypatch):
    import ddpm.cli.evaluate as evaluate
    monkeypatch.setattr("ddpm.sampling.defaults.MAX_SIGNAL_AT_START", 1.0)  # the tiny schedule: see test_generate
    seen = {}

    def drawn(run, n, sampling, **kw):
        seen.update(vars(sampling))
        return SimpleNamespace(images=torch.zeros(n, 1, 8, 8, dtype=torch.uint8), labels=None)
    monkeypatch.setattr(evaluate, "generate", drawn)
    monkeypatch.setattr(evaluate, "run_quality", lambda images, out, name, labels=None: {})
    monkeypatch.setattr(evaluate, "quality_summary", lambda report: "")
    assert main(["eval", "quality", str(run), "-n", "2", "--steps", "4", *extra, "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    assert seen["steps"] == 4 and seen["spacing"] == spacing
