"""`ddpm edit` and `ddpm inpaint` end to end on a tiny run, and their one-line errors."""
import json

import numpy as np
import pytest
from PIL import Image

from ddpm.cli.main import main


def test_edit_writes_results_and_a_comparison(tiny_run, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["edit", str(tiny_run), "--image", "test:0-2", "--t", "8", "-n", "2", "--steps", "4",
                 "--sampler", "ddim", "--out", str(out), "--no-progress"]) == 0
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (6, 8, 8, 1) and len(list((out / "images").glob("*.png"))) == 6
    record = json.loads((out / "edit.json").read_text())
    assert record["t"] == 8 and record["steps"] == 4 and record["n"] == 6 and 0 < record["abar_t"] < 1
    assert Image.open(out / "compare.png").size == (3 * 10 + 2, 6 * 10 + 2)  # picture | x_t | result, 6 rows
    assert "written to" in capsys.readouterr().out
    # t = 0 gives the pictures back; a PNG in, and the same seed gives the same edit
    Image.fromarray(images[0, ..., 0]).save(tmp_path / "one.png")
    assert main(["edit", str(tiny_run), "--image", str(tmp_path / "one.png"), "--t", "0", "--out", str(out),
                 "--no-progress"]) == 0
    assert np.array_equal(np.load(out / "samples.npz")["images"][0], images[0])


def test_inpaint_keeps_the_unmasked_pixels(tiny_run, tmp_path):
    out = tmp_path / "i"
    assert main(["inpaint", str(tiny_run), "--image", "test:0-3", "--mask", "bottom", "--steps", "6",
                 "--jump-length", "2", "--resample", "2", "--out", str(out), "--no-progress"]) == 0
    done = np.load(out / "samples.npz")["images"]
    assert main(["edit", str(tiny_run), "--image", "test:0-3", "--t", "0", "--out", str(tmp_path / "g"),
                 "--no-progress"]) == 0
    originals = np.load(tmp_path / "g" / "samples.npz")["images"]
    assert np.array_equal(done[:, :4], originals[:, :4]) and not np.array_equal(done[:, 4:], originals[:, 4:])
    record = json.loads((out / "inpaint.json").read_text())
    assert record["resample"] == 2 and record["network_calls_per_batch"] == 6 + 1 * 2 * 2
    # a mask picture: white is painted
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 6:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert main(["inpaint", str(tiny_run), "--image", "test:0", "--mask", str(tmp_path / "m.png"), "--steps", "4",
                 "--resample", "1", "--out", str(out), "--no-progress", "-n", "2"]) == 0
    done = np.load(out / "samples.npz")["images"]
    assert done.shape[0] == 2 and np.array_equal(done[:, :, :6], np.repeat(originals[:1, :, :6], 2, axis=0))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(d / "nine.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + np.array([255, 0, 0], np.uint8)).save(d / "red.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "black.png")
    (d / "broken.png").write_bytes(b"no image here")
    return d


@pytest.mark.parametrize("argv, needle", [
    (["edit", "RUN", "--image", "P/nine.png", "--t", "5"], "--image P/nine.png is 9x9; the run makes 8x8 images"),
    (["edit", "RUN", "--image", "P/red.png", "--t", "5"], "is in colour; the run makes grey images"),
    (["edit", "RUN", "--image", "P/broken.png", "--t", "5"], "cannot read this image"),
    (["edit", "RUN", "--image", "P/absent.png", "--t", "5"], "--image P/absent.png: no such file"),
    (["edit", "RUN", "--image", "test:0", "--t", "21"], "--t must lie in [0, 20]"),
    (["edit", "RUN", "--image", "test:9999", "--t", "5"], "held-out images 9999-9999"),
    (["edit", "RUN", "--image", "test:0", "--t", "5", "--eta", "0.5"], "--eta applies to --sampler ddim only"),
    (["edit", "MISSING_RUN", "--image", "test:0", "--t", "5"], "MISSING_RUN"),
    (["inpaint", "RUN", "--image", "test:0", "--mask", "P/black.png"], "--mask P/black.png: the mask is empty"),
    (["inpaint", "RUN", "--image", "test:0", "--mask", "middle"], "--mask middle: neither top, bottom, left, right"),
    (["inpaint", "RUN", "--image", "test:0", "--mask", "P/nine.png"], "--mask P/nine.png is 9x9"),
    (["inpaint", "RUN", "--image", "test:0", "--mask", "top", "--steps", "8", "--jump-length", "8"],
     "--jump-length 8 leaves no room for a jump in --steps 8"),
    (["inpaint", "RUN", "--image", "test:0", "--mask", "top", "--steps", "30"], "--steps must lie in [1, 20]"),
    (["inpaint", "RUN", "--image", "test:0", "--mask", "top", "--resample", "0"], "--resample: must be >= 1"),
])
def test_mistakes_are_one_line_before_any_work(argv, needle, tiny_run, pictures, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pictures.parent)
    argv = [a.replace("RUN", str(tiny_run)) if a == "RUN" else a.replace("P/", f"{pictures.name}/") for a in argv]
    needle = needle.replace("P/", f"{pictures.name}/")
    monkeypatch.setattr("ddpm.cli.edit.edit", lambda *a, **k: pytest.fail("edited before the checks"))
    monkeypatch.setattr("ddpm.cli.edit.inpaint", lambda *a, **k: pytest.fail("inpainted before the checks"))
    assert _status([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o" / "samples.npz").exists()


def _status(argv) -> int:
    """The exit status of ``ddpm ARGV``: returned by main, or raised by argparse for a bad flag value."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("command", ["edit", "inpaint"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert f"examples:\n  ddpm {command} runs/digits" in capsys.readouterr().out
