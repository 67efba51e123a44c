import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.datasets import DataConfig, load_images, to_model_range
from ddpm.runs.images import (
    as_nhwc_uint8,
    atomic_write_path,
    make_grid,
    save_chain_gif,
    save_chain_strip,
    save_grid,
    save_individual,
    save_npz,
)


def _batch(n, c=1, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("n, nrow, cols, rows", [(16, None, 4, 4), (10, None, 4, 3), (1, None, 1, 1),
                                                 (7, 3, 3, 3), (5, 10, 5, 1), (2, None, 2, 1)])
def test_grid_size_arithmetic(n, nrow, cols, rows):
    img = make_grid(_batch(n), nrow=nrow, padding=2)
    assert img.size == (cols * (5 + 2) + 2, rows * (4 + 2) + 2)
    assert img.mode == "L"


def test_grid_places_tiles_and_handles_rgb_numpy_and_float():
    x = _batch(5, c=3)
    a = np.asarray(make_grid(x, nrow=2, padding=1))
    assert a.shape == (3 * 5 + 1, 2 * 6 + 1, 3)
    # tile k=3 sits at row 1, column 1
    assert np.array_equal(a[1 + 5:1 + 5 + 4, 1 + 6:1 + 6 + 5], x[3].permute(1, 2, 0).numpy())
    assert a[0].max() == 0  # padding
    nhwc = x.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.asarray(make_grid(nhwc, nrow=2, padding=1)), a)
    assert np.array_equal(np.asarray(make_grid(to_model_range(x), nrow=2, padding=1)), a)
    with pytest.raises(ValueError):
        make_grid(torch.zeros(2, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError):
        make_grid(np.zeros((2, 4, 4, 3), np.float32))


def test_save_grid_png(tmp_path):
    p = save_grid(tmp_path / "out" / "grid.png", _batch(9))
    with Image.open(p) as im:
        assert im.size == (3 * 7 + 2, 3 * 6 + 2)
    assert [q.name for q in (tmp_path / "out").iterdir()] == ["grid.png"]


def test_npz_round_trip(tmp_path):
    x = _batch(6, c=3)
    p = save_npz(tmp_path / "s.npz", x)
    with np.load(p) as z:
        assert list(z.files) == ["images"]
        a = z["images"]
    assert a.dtype == np.uint8 and a.shape == (6, 4, 5, 3)
    assert np.array_equal(a, x.permute(0, 2, 3, 1).numpy())
    # and the data loader reads it back unchanged (grey case: square images)
    g = _batch(3, c=1, h=6, w=6)
    save_npz(tmp_path / "g.npz", g)
    assert torch.equal(load_images(DataConfig(source=str(tmp_path / "g.npz"), image_size=6)), g)


def test_save_individual(tmp_path):
    x = _batch(12, c=1)
    paths = save_individual(tmp_path / "ind", x, prefix="digit", start=95)
    names = sorted(p.name for p in (tmp_path / "ind").iterdir())
    assert len(names) == 12 and names[0] == "digit_00095.png" and names[-1] == "digit_00106.png"
    assert [p.name for p in paths] == names
    with Image.open(paths[4]) as im:
        assert np.array_equal(np.asarray(im), x[4, 0].numpy())


def _chain(frames=4, k=3, c=1, size=8):
    # distinct frames so that Pillow keeps every one of them in the GIF
    return [(t, torch.full((k, c, size, size), 40 * j, dtype=torch.uint8)) for j, t in
            enumerate(range(frames * 100, 0, -100))]


def test_chain_strip_layout_and_labels(tmp_path):
    chain = _chain(frames=4, k=3, size=16)
    p = save_chain_strip(tmp_path / "strip.png", chain, padding=2)
    plain = save_chain_strip(tmp_path / "plain.png", chain, padding=2, labels=False)
    with Image.open(plain) as im:
        assert im.size == (4 * 18 + 2, 3 * 18 + 2)
        a = np.asarray(im)
    assert a[2, 2 + 18 * 2] == 80 and a[2 + 18 * 2, 2 + 18 * 3] == 120  # column j holds frame j
    with Image.open(p) as im:
        assert im.width == 4 * 18 + 2 and im.height > 3 * 18 + 2  # a label band on top
        labelled = np.asarray(im)
    band = labelled.shape[0] - a.shape[0]
    assert labelled[:band].max() > 200  # some text was drawn
    assert np.array_equal(labelled[band:], a)
    big = save_chain_strip(tmp_path / "big.png", _chain(frames=2, k=1, c=3, size=4), scale=3, labels=False)
    with Image.open(big) as im:
        assert im.size == (2 * 14 + 2, 14 + 2) and im.mode == "RGB"


def test_chain_gif_frames(tmp_path):
    chain = _chain(frames=5, k=4)
    p = save_chain_gif(tmp_path / "chain.gif", chain, duration_ms=50, hold_last_ms=700)
    with Image.open(p) as im:
        assert im.format == "GIF" and im.n_frames == 5
        im.seek(4)
        assert im.info["duration"] == 700
        im.seek(0)
        assert im.info["duration"] == 50
    floats = [(t, to_model_range(x)) for t, x in _chain(frames=3, k=2, c=3)]
    with Image.open(save_chain_gif(tmp_path / "rgb.gif", floats)) as im:
        assert im.n_frames == 3


def test_chain_rejects_mismatched_frames(tmp_path):
    chain = [(2, torch.zeros(2, 1, 4, 4, dtype=torch.uint8)), (1, torch.zeros(3, 1, 4, 4, dtype=torch.uint8))]
    with pytest.raises(ValueError, match="t=1"):
        save_chain_strip(tmp_path / "s.png", chain)
    with pytest.raises(ValueError):
        save_chain_gif(tmp_path / "s.gif", [])
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_success_leaves_only_target(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_write_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp != target
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [q.name for q in target.parent.iterdir()] == ["f.txt"]


def test_atomic_write_exception_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.npz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.npz"]
    fresh = tmp_path / "fresh.png"
    with pytest.raises(RuntimeError):
        with atomic_write_path(fresh) as tmp:
            raise RuntimeError
    assert not fresh.exists() and [q.name for q in tmp_path.iterdir()] == ["f.npz"]


def test_as_nhwc_accepts_grey_arrays():
    a = np.zeros((2, 3, 4), np.uint8)
    assert as_nhwc_uint8(a).shape == (2, 3, 4, 1)
    with pytest.raises(ValueError):
        as_nhwc_uint8(np.zeros((0, 3, 4), np.uint8))


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """mkstemp makes private 0600 files; a written picture or JSON must be readable like any other file."""
    import os
    import stat

    from ddpm.runtime.atomic import default_mode, write_json_atomic
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    save_grid(tmp_path / "g.png", torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    for name in ("a.json", "g.png"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == default_mode()
