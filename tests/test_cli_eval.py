"""`ddpm eval` and `ddpm study` end to end on a tiny run, and the one-line errors of the CLI."""
import json

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.study import pixel_variance

TINY = ["--preset", "tiny", "--data", "sklearn-digits", "--image-size", "8", "--timesteps", "20",
        "--batch-size", "8", "--no-progress", "--sample-every", "100"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    assert main(["train", *TINY, "--run-dir", str(run_dir), "--steps", "3"]) == 0
    return run_dir


def test_eval_nll_full_and_quick(run, capsys):
    assert main(["eval", "nll", str(run), "-n", "6", "--no-progress", "--out", str(run / "full")]) == 0
    full = json.loads((run / "full" / "nll.json").read_text())
    assert (run / "full" / "nll_terms.png").is_file()
    assert main(["eval", "nll", str(run), "-n", "6", "--quick", "5", "--no-progress", "--out", str(run / "q")]) == 0
    quick = json.loads((run / "q" / "nll.json").read_text())
    assert full["num_images"] == quick["num_images"] == 6 and full["mode"] == "full" and quick["mode"] == "quick"
    assert "bits/dim" in capsys.readouterr().out


def test_study_noise_writes_picture_and_orders_variance(run, capsys):
    out = run / "study"
    assert main(["study", "noise", str(run), "-n", "4", "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "noise_study.json").read_text())
    assert len(res) == 3 and (out / "noise_study.png").is_file()
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


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "MISSING_DIR"], "MISSING_DIR"),
    (["train", "--image-size", "30"], "30"),
    (["train", "--steps", "0"], "steps"),
    (["sample", "MISSING_RUN"], "MISSING_RUN"),
    (["eval", "nll", "MISSING_RUN"], "MISSING_RUN"),
    (["eval", "quality", "MISSING_SAMPLES.npz"], "MISSING_SAMPLES"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--run-dir", str(tmp_path / "r")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work: no run folder was made


def test_bad_data_files_are_refused_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 4), dtype=np.uint8))
    for src, needle in ((empty, "empty"), (corrupt, "a.png"), (wrong, "wrong.npy")):
        assert main(["train", "--data", str(src), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
