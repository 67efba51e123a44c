"""Start-up to the first training step, and training from a memory-mapped array larger than the memory allowed.

Two parts (figures in docs/performance.md, "Data start-up"):

``startup``: generates a folder of N images under /tmp (CelebA-sized 178 x 218 JPEGs trained at 64 x 64, and 32 x 32
PNGs), then times, each in a fresh interpreter, the start-up to the end of the first training step (the digits
preset's U-Net at the data's size, batch 8) in three ways: the in-memory reader of earlier versions
(``ddpm.data.datasets.load_images``, one core), the first start with the cache (``open_images``: the parallel decode
into it), and a later start (the cache mapped).  Each is split into the data's share (the data call) and the rest
(interpreter, torch, model, first step).  The generated folders and the cache are deleted afterwards.

``memory``: writes a uint8 .npy of M digit images (1 KiB each: 3 GB for 3,000,000), then trains the digits preset
for a few steps from it memory-mapped and from it read into memory, each in a fresh interpreter, and reports
RssAnon (the process's anonymous memory, from /proc/self/status: a memory map's pages are file-backed and not in
it), img/s and the losses; then, in one process, both trainers stepped round-robin (median img/s, so the machine's
load hits both alike) and the batch gather alone (ms per batch of 64).

    python benchmarks/data_startup.py startup --count 50000
    python benchmarks/data_startup.py startup --count 50000 --kind png
    python benchmarks/data_startup.py memory --count 3000000 --steps 15

Uses the public library only.  Run the two parts apart on a busy machine: both are disk- and core-bound.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD_START = r"""
import json, sys, time
t_spawn, mode, source, size, channels, cache = float(sys.argv[1]), *sys.argv[2:4], int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]
import torch
from ddpm.data import datasets
from ddpm.model.unet import UNetConfig
from ddpm.runs.config import TrainConfig
from ddpm.training.trainer import Trainer
t_imported = time.time()
cfg = datasets.DataConfig(source=source, image_size=size, channels=channels)
t0 = time.time()
images = datasets.load_images(cfg) if mode == "in-memory" else datasets.open_images(cfg, cache)
data_s = time.time() - t0
# the trainer's own data call is then given the images just read, so the data is read once per start
datasets.open_images = lambda *a, **k: images
config = TrainConfig.for_preset("digits", data=cfg, batch_size=8, steps=1, run_dir=sys.argv[7], progress=False)
trainer = Trainer(config)
loss, _ = trainer.train_step()
float(loss)
t_end = time.time()
print(json.dumps({"total_s": t_end - t_spawn, "data_s": data_s, "import_s": t_imported - t_spawn,
                  "rest_s": t_end - t_spawn - data_s, "n": len(images)}))
"""

_CHILD_MEMORY = r"""
import json, sys, time
mode, source, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
from ddpm.data import datasets
from ddpm.runs.config import TrainConfig
from ddpm.training.trainer import Trainer

def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

cfg = datasets.DataConfig(source=source, image_size=32, channels=1)
images = datasets.open_images(cfg)
if mode == "in-memory":
    images = images.clone()  # the same array, read whole into anonymous memory
datasets.open_images = lambda *a, **k: images
config = TrainConfig.for_preset("digits", data=cfg, batch_size=64, steps=steps, run_dir=sys.argv[4], progress=False,
                                seed=0)
trainer = Trainer(config)
losses, peak = [], rss_anon_mb()
trainer.train_step()  # warm-up, not timed
t0 = time.time()
for _ in range(steps):
    loss, _ = trainer.train_step()
    losses.append(float(loss))
    peak = max(peak, rss_anon_mb())
elapsed = time.time() - t0
print(json.dumps({"img_per_s": steps * 64 / elapsed, "rss_anon_peak_mb": peak, "losses": losses,
                  "n": len(images)}))
"""


_CHILD_INTERLEAVED = r"""
import json, statistics, sys, time
source, steps = sys.argv[1], int(sys.argv[2])
import torch
from ddpm.data import datasets
from ddpm.data.batches import Batches
from ddpm.runs.config import TrainConfig
from ddpm.training.trainer import Trainer
cfg = datasets.DataConfig(source=source, image_size=32, channels=1)
mapped = datasets.open_images(cfg)
arrays = {"memory-mapped": mapped, "in-memory": mapped.clone()}
gather = {}
for name, images in arrays.items():  # the data's share alone: 200 batches of 64
    b = Batches(images, 64, seed=0)
    next(b)
    t0 = time.perf_counter()
    for _ in range(200):
        next(b)
    gather[name] = (time.perf_counter() - t0) / 200 * 1e3
trainers = {}
for k, (name, images) in enumerate(arrays.items()):
    datasets.open_images = lambda *a, images=images, **kw: images
    config = TrainConfig.for_preset("digits", data=cfg, batch_size=64, steps=steps, run_dir=sys.argv[3] + str(k),
                                    progress=False, seed=0)
    trainers[name] = Trainer(config)
    trainers[name].train_step()  # warm-up
times = {name: [] for name in trainers}
for _ in range(steps):  # round-robin, so the machine's load hits both alike
    for name, trainer in trainers.items():
        t0 = time.perf_counter()
        trainer.train_step()
        times[name].append(time.perf_counter() - t0)
print(json.dumps({name: {"img_per_s": 64 / statistics.median(t), "gather_ms_per_batch": gather[name]}
                  for name, t in times.items()}))
"""


def _celeba_like(rng, n_patterns=64):
    """Smooth colour pictures (gradients and low-frequency noise) that compress like photographs."""
    from PIL import Image
    pats = []
    yy, xx = np.mgrid[0:218, 0:178] / 218.0
    for _ in range(n_patterns):
        low = rng.random((7, 6, 3))
        base = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((178, 218), Image.BICUBIC), float)
        grad = 60 * (rng.random(3) * yy[..., None] + rng.random(3) * xx[..., None])
        pats.append(np.clip(base * 0.7 + grad + rng.normal(0, 6, (218, 178, 3)), 0, 255).astype(np.uint8))
    return pats


def generate(folder: Path, count: int, kind: str, seed: int = 0) -> float:
    """``count`` images in ``folder`` (distinct files: a shared pattern with a per-image shift); seconds taken."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pats = _celeba_like(rng) if kind == "jpeg" else [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                                                   for _ in range(64)]
    for i in range(count):
        a = np.roll(pats[i % len(pats)], i // len(pats), axis=1)
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        if kind == "jpeg":
            Image.fromarray(a).save(sub / f"{i:06d}.jpg", quality=90)
        else:
            Image.fromarray(a).save(sub / f"{i:06d}.png")
    return time.time() - t0


def _child(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup(count: int, root: Path, kinds=("jpeg", "png")) -> list[dict]:
    rows = []
    for kind, size in (("jpeg", 64), ("png", 32)):
        if kind not in kinds:
            continue
        folder, cache = root / kind, root / f"cache-{kind}"
        gen_s = generate(folder, count, kind)
        for mode in ("in-memory", "first start (decode into the cache)", "later start (cache mapped)"):
            run_dir = Path(tempfile.mkdtemp(dir=root))
            r = _child(_CHILD_START, time.time(), mode, folder, size, 3, cache, run_dir / "run")
            rows.append({"data": f"{count} {kind.upper()}s -> {size}", "mode": mode, **r, "generate_s": gen_s})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(folder)
        shutil.rmtree(cache)
    return rows


def memory(count: int, steps: int, root: Path) -> list[dict]:
    from ddpm.data.datasets import DataConfig, load_images
    digits = load_images(DataConfig(source="digits", image_size=32, channels=1)).numpy()
    path = root / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 1, 32, 32))
    for s in range(0, count, len(digits)):
        e = min(count, s + len(digits))
        out[s:e] = np.roll(digits[:e - s], (s // len(digits)) % 32, axis=-1)
    out.flush()
    del out
    rows = []
    for mode in ("memory-mapped", "in-memory"):
        r = _child(_CHILD_MEMORY, mode, path, steps, Path(tempfile.mkdtemp(dir=root)) / "run")
        rows.append({"mode": mode, "array_gb": path.stat().st_size / 1e9, **r})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
    print("losses identical:", rows[0]["losses"] == rows[1]["losses"])
    both = _child(_CHILD_INTERLEAVED, path, steps, Path(tempfile.mkdtemp(dir=root)) / "run")
    print("interleaved, one process:", json.dumps(both), flush=True)
    path.unlink()
    return rows


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["startup", "memory"])
    p.add_argument("--count", type=int, default=None, help="images (startup: 50,000; memory: 3,000,000)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--kind", choices=["jpeg", "png", "both"], default="both", help="startup: which folder")
    p.add_argument("--root", default=None, help="a scratch folder (default: a new one under /tmp, deleted after)")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ddpm-data-bench-"))
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    try:
        if args.part == "startup":
            startup(args.count or 50_000, root, ("jpeg", "png") if args.kind == "both" else (args.kind,))
        else:
            memory(args.count or 3_000_000, args.steps, root)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
