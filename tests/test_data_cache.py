"""The decode-once cache (ddpm.data.cache), memory-mapped training data, Parquet / saved datasets, the one picture
reader.  Every expected value is the in-memory reader's (load_images), an independent path through Pillow."""
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import cache as cache_mod
from ddpm.data.batches import Batches
from ddpm.data.datasets import DataConfig, DataError, load_images, open_images
from ddpm.data.files import native_shape, read_picture, to_nhwc
from ddpm.data.labels import load_labels


def _folder(root: Path, n=12, size=(11, 9), classes=None, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        where = root / classes[i % len(classes)] if classes else root
        where.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(where / f"{i:03d}.png")
    return root


def _count_decodes(monkeypatch):
    calls = []
    real = cache_mod._decode_into

    def counting(out, indices, *a):
        calls.append(len(indices))
        return real(out, indices, *a)
    monkeypatch.setattr(cache_mod, "_decode_into", counting)
    return calls


def test_the_cache_holds_what_the_in_memory_reader_reads_and_is_reused(tmp_path, monkeypatch):
    src = _folder(tmp_path / "f")
    cfg = DataConfig(source=str(src), image_size=8, channels=3)
    calls = _count_decodes(monkeypatch)
    first = open_images(cfg, tmp_path / "c")
    assert torch.equal(first, load_images(cfg)) and sum(calls) == 12
    again = open_images(cfg, tmp_path / "c")
    assert torch.equal(again, first) and sum(calls) == 12  # unchanged folder: mapped, not decoded
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1


@pytest.mark.parametrize("change", ["changed", "added", "removed", "size"])
def test_a_changed_source_rebuilds_the_cache(tmp_path, monkeypatch, change):
    src = _folder(tmp_path / "f")
    cfg = DataConfig(source=str(src), image_size=8, channels=3)
    open_images(cfg, tmp_path / "c")
    calls = _count_decodes(monkeypatch)
    if change == "changed":  # new pixels and a new mtime (set explicitly: a coarse clock could keep the old one)
        Image.fromarray(np.zeros((11, 9, 3), np.uint8)).save(src / "003.png")
        os.utime(src / "003.png", ns=(1, 10**18))
    elif change == "added":
        Image.fromarray(np.full((11, 9, 3), 7, np.uint8)).save(src / "999.png")
    elif change == "removed":
        (src / "005.png").unlink()
    else:
        cfg = DataConfig(source=str(src), image_size=4, channels=3)
    got = open_images(cfg, tmp_path / "c")
    assert sum(calls) == len(got) and torch.equal(got, load_images(cfg))


def test_a_truncated_or_corrupt_cache_is_rebuilt_never_read(tmp_path, monkeypatch):
    src = _folder(tmp_path / "f")
    cfg = DataConfig(source=str(src), image_size=8, channels=3)
    want = load_images(cfg)
    open_images(cfg, tmp_path / "c")
    path = next((tmp_path / "c").glob("*.npy"))
    calls = _count_decodes(monkeypatch)
    for damage in ("truncate", "flip", "footer"):
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[:len(data) // 2]
        elif damage == "flip":
            data[len(data) - 40] ^= 0xFF  # an image byte just before the footer (sampled: the cache is small)
        else:
            data[-20] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="truncated or corrupt"):
            got = open_images(cfg, tmp_path / "c")
        assert torch.equal(got, want)
    assert sum(calls) == 3 * 12


_KILLER = """
import os, signal, sys
from ddpm.data import cache
from ddpm.data.datasets import DataConfig, open_images
real = cache._decode_into
def dying(out, indices, *a):
    got = real(out, indices, *a)
    if indices.start >= 64:  # after the first chunk of images is in the file
        os.kill(os.getpid(), signal.SIGKILL)
    return got
cache._decode_into = dying
cache.decode_workers = lambda: 1
open_images(DataConfig(source=sys.argv[1], image_size=4, channels=3), sys.argv[2])
"""


def test_a_cache_killed_mid_write_is_never_read_and_is_rebuilt(tmp_path):
    src = _folder(tmp_path / "f", n=130, size=(4, 4))
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(src), str(tmp_path / "c")], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not list((tmp_path / "c").glob("*.npy")) and list((tmp_path / "c").glob("*.tmp"))  # half-written only
    cfg = DataConfig(source=str(src), image_size=4, channels=3)
    assert torch.equal(open_images(cfg, tmp_path / "c"), load_images(cfg))
    assert not list((tmp_path / "c").glob("*.tmp"))  # the dead writer's file is cleared


def test_two_builders_at_once_decode_once_and_agree(tmp_path, monkeypatch):
    src = _folder(tmp_path / "f", n=40)
    cfg = DataConfig(source=str(src), image_size=8, channels=3)
    calls = _count_decodes(monkeypatch)
    got = [None, None]

    def build(k):
        got[k] = open_images(cfg, tmp_path / "c")
    threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], load_images(cfg))
    assert sum(calls) == 40  # the second waited on the lock, then mapped the first one's cache


def test_memory_mapped_batches_equal_in_memory_ones_under_two_ranks_and_across_a_resume(tmp_path):
    src = _folder(tmp_path / "f", n=23, classes=["a", "b", "c"])
    cfg = DataConfig(source=str(src), image_size=8, channels=3, class_cond=True)
    mapped, memory = open_images(cfg, tmp_path / "c"), load_images(cfg)
    assert isinstance(mapped.numpy(), np.ndarray) and not mapped.numpy().flags.owndata  # a view of the map
    labels, _ = load_labels(cfg)
    for rank in range(2):
        kw = dict(batch_size=4, seed=5, hflip=True, rank=rank, world_size=2, labels=labels)
        a, b = Batches(mapped, **kw), Batches(memory, **kw)
        for _ in range(4):
            (xa, ya), (xb, yb) = next(a), next(b)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        resumed = Batches(mapped, **kw)
        resumed.load_state_dict(a.state_dict())
        for _ in range(5):  # across the epoch boundary (2 batches per rank per epoch)
            (xa, ya), (xb, yb) = next(resumed), next(b)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_uint8_npy_is_memory_mapped_in_either_layout(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", images)
    cfg = DataConfig(source=str(tmp_path / "nhwc.npy"), image_size=8, channels=3)
    got = open_images(cfg)
    assert not got.numpy().flags.owndata and torch.equal(got, load_images(cfg))
    assert torch.equal(next(Batches(got, 3, seed=0)), next(Batches(load_images(cfg), 3, seed=0)))


def test_unreadable_images_are_named_and_counted_and_nothing_is_cached(tmp_path):
    src = _folder(tmp_path / "f")
    for name in ("002.png", "007.png", "009.png"):
        (src / name).write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"002\.png: cannot read this image .*and 2 more unreadable images of 12"):
        open_images(DataConfig(source=str(src), image_size=8, channels=3), tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.npy")) and not list((tmp_path / "c").glob("*.tmp"))


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
    src = _folder(tmp_path / "f")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot make the data cache folder .*--data-cache DIR"):
        open_images(DataConfig(source=str(src), image_size=8, channels=3), tmp_path / "file" / "cache")


# ------------------------------------------------------------------------------------------ tables

def _pictures(n=9, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(n)]


def _png(a) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_with_an_image_struct_column_loads_with_its_labels(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import json

    import pyarrow.parquet as pq
    pics = _pictures()
    labels = [i % 3 for i in range(len(pics))]
    image = pa.array([{"bytes": _png(a), "path": None} for a in pics],
                     type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    meta = {"info": {"features": {"label": {"names": ["cat", "dog", "owl"], "_type": "ClassLabel"}}}}
    table = pa.table({"image": image, "label": pa.array(labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), tmp_path / "t.parquet")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, a in enumerate(pics):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    cfg = DataConfig(source=str(tmp_path / "t.parquet"), image_size=8, channels=3, class_cond=True)
    want = load_images(DataConfig(source=str(folder), image_size=8, channels=3))
    assert torch.equal(open_images(cfg, tmp_path / "c"), want) and torch.equal(load_images(cfg), want)
    got, names = load_labels(cfg)
    assert got.tolist() == labels and names == ("cat", "dog", "owl")
    assert native_shape(tmp_path / "t.parquet") == (3, 10)  # what `ddpm train` takes --channels from


def test_a_table_without_pyarrow_says_which_extra_to_install(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(DataError, match=r"t\.parquet: reading Parquet .* needs pyarrow; pip install 'ddpm\["):
        load_images(DataConfig(source=str(tmp_path / "t.parquet"), image_size=8, channels=3))


def test_parquet_without_an_image_column_is_one_line(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet: no 'image' column \(it has img, label\)"):
        open_images(DataConfig(source=str(tmp_path / "t.parquet"), image_size=8, channels=3), tmp_path / "c")


def test_a_saved_hugging_face_dataset_loads_with_its_class_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    pics = _pictures(seed=4)
    labels = [(i * 2) % 3 for i in range(len(pics))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y", "z"])})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in pics], "label": labels},
                                    features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(source=str(tmp_path / "saved"), image_size=8, channels=3, class_cond=True)
    want = load_images(DataConfig(source=str(tmp_path / "saved" / "train"), image_size=8, channels=3))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, a in enumerate(pics):
        Image.fromarray(a).save(folder / f"{i:02d}.png")
    assert torch.equal(want, load_images(DataConfig(source=str(folder), image_size=8, channels=3)))
    assert torch.equal(open_images(cfg, tmp_path / "c"), want)
    got, names = load_labels(cfg)
    assert got.tolist() == labels and names == ("x", "y", "z")


# ------------------------------------------------------------------------------------------ one picture reader

def test_to_nhwc_takes_every_layout_of_one_picture_array():
    hwc = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    for a in (hwc, hwc[None], hwc.transpose(2, 0, 1)[None]):
        assert np.array_equal(to_nhwc(a, "x"), hwc[None])
    assert to_nhwc(hwc[..., 0], "x").shape == (1, 5, 6, 1)
    assert to_nhwc(np.zeros((4, 5, 6), np.uint8), "x").shape == (4, 5, 6, 1)
    with pytest.raises(DataError, match="x: a picture array of shape"):
        to_nhwc(np.zeros((2, 5, 6, 7), np.uint8), "x")


def test_the_npz_key_rule_is_the_training_one(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "one.npz", pictures=a, y=np.zeros(2))  # the only array beside the labels
    np.savez(tmp_path / "two.npz", images=a, other=a[:1])
    assert np.array_equal(read_picture(tmp_path / "one.npz"), a)
    assert np.array_equal(read_picture(tmp_path / "two.npz"), a)


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch):
    Image.new("1", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # over the limit: Pillow warns; over twice: it refuses
    with pytest.raises(DataError, match=r"big\.png: the image is larger than Pillow's limit of 50,000 pixels"):
        read_picture(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(DataError, match=r"big\.png: the image is larger than Pillow's limit"):
        load_images(DataConfig(source=str(tmp_path), image_size=8))


# ------------------------------------------------------------------------------------------ training from the map

def test_training_from_the_cache_gives_the_in_memory_losses_and_resumes_exactly(tmp_path):
    from conftest import TINY

    from ddpm.cli.main import main
    from ddpm.runs.rundir import read_metrics
    src = _folder(tmp_path / "f", n=20, size=(8, 8))
    np.savez(tmp_path / "same.npz", images=load_images(DataConfig(source=str(src), image_size=8, channels=3)).numpy())
    flags = [f for f in TINY if f not in ("--data", "sklearn-digits")] + ["--channels", "3", "--seed", "3"]

    def losses(run):
        return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    cache = ["--data-cache", str(tmp_path / "c")]
    assert main(["train", *flags, *cache, "--data", str(src), "--run-dir", str(tmp_path / "a"), "--steps", "4"]) == 0
    assert main(["train", *flags, "--data", str(tmp_path / "same.npz"), "--run-dir", str(tmp_path / "b"),
                 "--steps", "4"]) == 0
    assert main(["train", *flags, *cache, "--data", str(src), "--run-dir", str(tmp_path / "r"), "--steps", "2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "r"), "--steps", "4", "--no-progress", *cache]) == 0
    a = losses(tmp_path / "a")
    assert a == losses(tmp_path / "b") == losses(tmp_path / "r") and len(a) == 4
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
