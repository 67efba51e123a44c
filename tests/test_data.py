import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.datasets import (
    DataConfig,
    DataError,
    check_image_size,
    load_images,
    to_model_range,
    to_uint8,
)
from ddpm.data.embedded import digits_split, digits_split_indices, sklearn_digits_split

# ------------------------------------------------------------------------------------------ embedded digits

def test_digits_split_sizes_stratified_disjoint():
    train, test = digits_split_indices("train"), digits_split_indices("test")
    assert len(train) == 4500 and len(test) == 500
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    xs, ys = digits_split("test")
    assert xs.shape == (500, 1, 28, 28) and xs.dtype == torch.uint8 and ys.dtype == torch.int64
    assert torch.bincount(ys, minlength=10).tolist() == [50] * 10
    xtr, ytr = digits_split("train")
    assert torch.bincount(ytr, minlength=10).tolist() == [450] * 10
    xa, _ = digits_split("all")
    assert len(xa) == 5000 and torch.equal(xa[torch.from_numpy(test)], xs)


def test_digits_split_is_pinned():
    # the split must never change: these are the first test indices for the constant seed
    assert digits_split_indices("test")[:8].tolist() == PINNED_TEST_HEAD
    assert int(digits_split_indices("test").sum()) == PINNED_TEST_SUM


PINNED_TEST_HEAD = [11, 34, 52, 57, 61, 64, 69, 79]
PINNED_TEST_SUM = 1244639


def test_digits_tensors_are_fresh_copies():
    a, _ = digits_split("test")
    a[:] = 0
    b, _ = digits_split("test")
    assert b.max() > 0


def test_digits_padding_to_32_keeps_digit_and_zero_border():
    raw, _ = digits_split("train")
    x = load_images(DataConfig(source="digits", image_size=32, split="train"))
    assert x.shape == (4500, 1, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, :, 2:30, 2:30], raw)
    border = x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.max() == 0
    assert raw.max() == 255


def test_digits_other_size_resized_and_rgb():
    x = load_images(DataConfig(source="digits", image_size=16, channels=3, split="test"))
    assert x.shape == (500, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert x.float().mean() > 10  # the digits survived the resize


def test_sklearn_digits_split_and_scale():
    tr, ytr = sklearn_digits_split("train")
    te, yte = sklearn_digits_split("test")
    assert len(tr) + len(te) == 1797 and len(te) == 180
    assert tr.shape[1:] == (1, 8, 8) and te.max() == 255 and te.min() == 0
    assert torch.bincount(yte, minlength=10).tolist() == [18] * 10
    again, _ = sklearn_digits_split("test")
    assert torch.equal(again, te)
    x = load_images(DataConfig(source="sklearn-digits", image_size=8, split="all"))
    assert x.shape == (1797, 1, 8, 8)
    # disjoint: the union of the two splits is the whole set (compare as multisets of rows)
    allrows = sorted(map(bytes, x.reshape(1797, -1).numpy()))
    assert allrows == sorted(map(bytes, torch.cat([tr, te]).reshape(1797, -1).numpy()))
    assert load_images(DataConfig(source="sklearn-digits", image_size=16)).shape == (len(tr), 1, 16, 16)


def test_sklearn_digits_are_scaled_from_0_16_to_0_255_pixel_by_pixel():
    """scikit-learn's values v in 0..16 become round(v * 255 / 16): 0 -> 0, 8 -> 128 (127.5 rounds to even), 16 -> 255;
    split "all" keeps the file order, so it equals the scaled raw images."""
    from sklearn.datasets import load_digits
    raw = load_digits().images
    assert set(np.unique(raw).tolist()) <= set(range(17))
    table = np.array([int(np.rint(v * 255 / 16)) for v in range(17)], dtype=np.uint8)
    assert table[[0, 1, 8, 15, 16]].tolist() == [0, 16, 128, 239, 255]
    x, _ = sklearn_digits_split("all")
    assert np.array_equal(x[:, 0].numpy(), table[raw.astype(np.int64)])


# ------------------------------------------------------------------------------------------------ scaling

def test_scaling_round_trip_exact_and_range():
    u = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(u)
    assert x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert x[0].item() == -1.0 and x[255].item() == 1.0
    assert torch.equal(to_uint8(x), u)
    assert torch.allclose(x.double(), u.double() / 127.5 - 1, rtol=0, atol=1e-7)


def test_to_uint8_clamps_and_rejects_ints():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0, float("nan")])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 0]
    with pytest.raises(TypeError):
        to_model_range(torch.zeros(2))
    with pytest.raises(TypeError):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


def test_check_image_size():
    check_image_size(32, 8)
    check_image_size(28, 4)
    with pytest.raises(DataError, match="not a multiple of 8"):
        check_image_size(28, 8)
    with pytest.raises(DataError):
        check_image_size(4, 8)


# ----------------------------------------------------------------------------------------- image folders

def _write(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def test_folder_loading_png_jpeg_nested_rgb_to_l(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    _write(tmp_path / "b.png", red)
    _write(tmp_path / "sub" / "deeper" / "a.JPG", np.full((8, 8, 3), 200, np.uint8), quality=95)
    _write(tmp_path / "c.bmp", np.full((8, 8), 7, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="2 of 3 images are in colour and were converted to grey"):
        x = load_images(DataConfig(source=str(tmp_path), image_size=8, channels=1))
    assert x.shape == (3, 1, 8, 8)
    # sorted relative paths: b.png, c.bmp, sub/deeper/a.JPG
    assert x[0].unique().tolist() == [76]   # Pillow's L = 299/1000 R
    assert x[1].unique().tolist() == [7]
    assert abs(int(x[2].float().mean()) - 200) <= 2
    rgb = load_images(DataConfig(source=str(tmp_path), image_size=8, channels=3))
    assert rgb.shape == (3, 3, 8, 8)
    assert rgb[0, 0].unique().tolist() == [255] and rgb[0, 1].max() == 0
    assert torch.equal(rgb[1, 0], rgb[1, 2])  # grey -> RGB repeats


def test_folder_resize_short_side_and_centre_crop(tmp_path):
    # 20 wide x 10 high: left quarter black, middle half white, right quarter black
    a = np.zeros((10, 20), np.uint8)
    a[:, 5:15] = 255
    _write(tmp_path / "wide.png", a)
    x = load_images(DataConfig(source=str(tmp_path), image_size=10))
    assert x.shape == (1, 1, 10, 10)
    assert x.min() == 255  # the crop keeps exactly the white middle
    y = load_images(DataConfig(source=str(tmp_path), image_size=5))
    assert y.shape == (1, 1, 5, 5) and y.float().mean() > 200


def test_folder_tall_image_is_centre_cropped_vertically(tmp_path):
    """10 wide x 20 high: top quarter black, middle half white, bottom quarter black; the short side (10) stays and
    the centre crop keeps rows 5..14, exactly the white band."""
    a = np.zeros((20, 10), np.uint8)
    a[5:15, :] = 255
    _write(tmp_path / "tall.png", a)
    x = load_images(DataConfig(source=str(tmp_path), image_size=10))
    assert x.shape == (1, 1, 10, 10) and x.min() == 255


def test_resize_filters_lanczos_to_shrink_and_bicubic_to_enlarge(tmp_path):
    """Shrinking uses Pillow's Lanczos filter (anti-aliased), enlarging bicubic: a random 12x12 image loaded at 6 and
    at 24 equals Pillow's own resize with those filters (and differs from the other filter)."""
    a = np.random.default_rng(3).integers(0, 256, (12, 12), dtype=np.uint8)
    _write(tmp_path / "a.png", a)
    for size, right, wrong in ((6, Image.Resampling.LANCZOS, Image.Resampling.BICUBIC),
                               (24, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*1 of 1 images are smaller", UserWarning)  # the 24 case
            got = load_images(DataConfig(source=str(tmp_path), image_size=size))[0, 0].numpy()
        assert np.array_equal(got, np.asarray(Image.fromarray(a).resize((size, size), resample=right)))
        assert not np.array_equal(got, np.asarray(Image.fromarray(a).resize((size, size), resample=wrong)))


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope"):
        load_images(DataConfig(source=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty.*no images"):
        load_images(DataConfig(source=str(empty)))
    bad = tmp_path / "bad"
    _write(bad / "ok.png", np.zeros((4, 4), np.uint8))
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_images(DataConfig(source=str(bad), image_size=4))
    truncated = tmp_path / "trunc"
    _write(truncated / "t.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    data = (truncated / "t.png").read_bytes()
    (truncated / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.png"):
        load_images(DataConfig(source=str(truncated), image_size=4))
    with pytest.raises(DataError, match="no test split"):
        load_images(DataConfig(source=str(bad), split="test"))
    other = tmp_path / "data.csv"
    other.write_text("1,2")
    with pytest.raises(DataError, match="data.csv.*unsupported"):
        load_images(DataConfig(source=str(other)))


def test_bad_config_values():
    for kw in ({"channels": 2}, {"image_size": 0}, {"split": "val"}):
        with pytest.raises(DataError):
            DataConfig(**kw)


def test_config_round_trip():
    c = DataConfig(source="x.npz", image_size=16, channels=3, split="all", hflip=True)
    d = json.loads(json.dumps(c.to_dict()))
    with pytest.warns(UserWarning, match="data: ignoring unknown setting unknown"):
        assert DataConfig.from_dict({**d, "unknown": 1}) == c


# ---------------------------------------------------------------------------------------------- arrays

def _imgs(n=4, h=6, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["nhw", "nhwc1", "nc1hw"])
def test_npy_grey_layouts(tmp_path, layout):
    a = _imgs()
    arr = {"nhw": a, "nhwc1": a[..., None], "nc1hw": a[:, None]}[layout]
    np.save(tmp_path / "a.npy", arr)
    x = load_images(DataConfig(source=str(tmp_path / "a.npy"), image_size=6))
    assert torch.equal(x, torch.from_numpy(a[:, None]))


def test_npz_rgb_layouts_keys_and_float(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    want = torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy())
    np.savez(tmp_path / "a.npz", labels=np.arange(3), images=rgb)
    assert torch.equal(load_images(DataConfig(source=str(tmp_path / "a.npz"), image_size=6, channels=3)), want)
    np.savez(tmp_path / "b.npz", rgb.transpose(0, 3, 1, 2))  # arr_0, NCHW
    assert torch.equal(load_images(DataConfig(source=str(tmp_path / "b.npz"), image_size=6, channels=3)), want)
    np.save(tmp_path / "f.npy", rgb.astype(np.float32) / 255.0)
    assert torch.equal(load_images(DataConfig(source=str(tmp_path / "f.npy"), image_size=6, channels=3)), want)
    np.save(tmp_path / "i.npy", rgb.astype(np.int64))
    assert torch.equal(load_images(DataConfig(source=str(tmp_path / "i.npy"), image_size=6, channels=3)), want)
    grey = load_images(DataConfig(source=str(tmp_path / "a.npz"), image_size=6, channels=1))
    assert grey.shape == (3, 1, 6, 6)


def test_array_resized_to_image_size(tmp_path):
    np.save(tmp_path / "a.npy", np.full((2, 12, 12), 99, np.uint8))
    x = load_images(DataConfig(source=str(tmp_path / "a.npy"), image_size=4))
    assert x.shape == (2, 1, 4, 4) and x.unique().tolist() == [99]


@pytest.mark.parametrize("arr, msg", [
    (np.zeros((4, 4), np.uint8), "2 dims"),
    (np.zeros((2, 3, 4, 4, 1), np.uint8), "5 dims"),
    (np.zeros((2, 5, 5, 2), np.uint8), "channel"),
    (np.zeros((2, 4, 4), np.float32) - 0.5, r"\[0, 1\]"),
    (np.full((2, 4, 4), np.nan, np.float32), r"\[0, 1\]"),
    (np.full((2, 4, 4), 300, np.int32), "0..255"),
    (np.zeros((2, 4, 4), bool), "dtype bool"),
    (np.zeros((0, 4, 4), np.uint8), "no images"),
])
def test_bad_arrays_raise_with_path(tmp_path, arr, msg):
    p = tmp_path / "weird_name.npy"
    np.save(p, arr)
    with pytest.raises(DataError, match=msg) as e:
        load_images(DataConfig(source=str(p), image_size=4))
    assert "weird_name.npy" in str(e.value) and "\n" not in str(e.value)


def test_bad_npz_files(tmp_path):
    p = tmp_path / "empty.npz"
    np.savez(p)
    with pytest.raises(DataError, match="empty.npz"):
        load_images(DataConfig(source=str(p)))
    q = tmp_path / "corrupt.npy"
    q.write_bytes(b"definitely not numpy")
    with pytest.raises(DataError, match="corrupt.npy"):
        load_images(DataConfig(source=str(q)))
    r = tmp_path / "obj.npy"
    np.save(r, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):
        load_images(DataConfig(source=str(r)))


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    """Pillow's own 16 -> 8 bit conversion clips to 255; a 0..65535 ramp must come out as a 0..255 ramp."""
    from PIL import Image
    ramp = (np.arange(64, dtype=np.float64).reshape(8, 8) * 65535 / 63).round().astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode.startswith("I")  # really stored with 16 bits
    got = load_images(DataConfig(source=str(tmp_path), image_size=8, split="all"))[0, 0].numpy()
    assert np.array_equal(got, np.rint(ramp / 257.0).astype(np.uint8)) and got.max() == 255 and got.min() == 0


def test_an_npz_of_several_unnamed_arrays_is_refused_with_its_keys(tmp_path):
    np.savez(tmp_path / "tv.npz", val=np.zeros((10, 8, 8), np.uint8), train=np.zeros((100, 8, 8), np.uint8))
    with pytest.raises(DataError, match="holds the arrays val, train .*key 'images'"):
        load_images(DataConfig(source=str(tmp_path / "tv.npz"), image_size=8, split="all"))


def test_enlarging_small_images_is_said(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((3, 8, 8), np.uint8))
    with pytest.warns(UserWarning, match="3 of 3 images are smaller than 16x16 and were enlarged"):
        assert load_images(DataConfig(source=str(tmp_path / "small.npy"), image_size=16, split="all")).shape == (
            3, 1, 16, 16)
    (tmp_path / "f").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "f" / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "f" / "b.png")
    with pytest.warns(UserWarning, match="1 of 2 images are smaller than 16x16"):
        load_images(DataConfig(source=str(tmp_path / "f"), image_size=16, split="all"))


@pytest.mark.parametrize("shape, expected", [((5, 28, 28), (1, 28)), ((5, 28, 30, 3), (3, 28)),
                                             ((5, 3, 16, 20), (3, 16)), ((5, 32, 32, 1), (1, 32))])
@pytest.mark.parametrize("save", ["npy", "npz", "npz_compressed"])
def test_native_shape_of_array_files_from_their_header(tmp_path, shape, expected, save, monkeypatch):
    a = np.zeros(shape, np.uint8)
    path = tmp_path / f"a.{save[:3]}"
    {"npy": np.save, "npz": lambda p, x: np.savez(p, images=x), "npz_compressed": np.savez_compressed}[save](path, a)
    from ddpm.data import files as data
    # the shape comes from the header: the data itself is read once, later, by load_images
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda *a: pytest.fail("read the array"))
    assert data.native_shape(path) == expected


def test_an_npz_member_without_the_npy_suffix_is_read(tmp_path):
    """np.load accepts a zip member named plain ``images`` (other writers than numpy.savez); so does native_shape."""
    import io
    import zipfile

    from ddpm.data import files as data
    buf = io.BytesIO()
    np.save(buf, np.zeros((5, 8, 8, 3), np.uint8))
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("images", buf.getvalue())
    assert data.native_shape(tmp_path / "x.npz") == (3, 8)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holding Python objects"):
        data.native_shape(obj)
