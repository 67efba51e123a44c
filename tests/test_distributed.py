"""Data-parallel training on CPU with gloo: 2 real processes, tiny model, 8x8 images, T = 20.

The data set is synthetic: image i carries its index in pixel (0, 0), so every batch a rank draws can be
decoded back to the dataset indices it holds.  Workers run in spawned processes with one thread each.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.core.schedule import ScheduleConfig
from ddpm.data.batches import Batches
from ddpm.data.datasets import DataConfig, DataError
from ddpm.model.unet import preset
from ddpm.runs.checkpoint import latest_checkpoint, load_checkpoint
from ddpm.runs.config import TrainConfig
from ddpm.runs.rundir import read_metrics
from ddpm.runtime import distributed
from ddpm.training.rates import lr_at
from ddpm.training.trainer import Trainer, train

N_IMAGES = 48        # per-rank batch 4, grad_accum 2, 2 ranks: 16 images a step, 3 steps an epoch
BATCH, ACCUM = 4, 2
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", distributed.TIMEOUT_ENV)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_IMAGES, 8, 8), dtype=np.uint8)
    images[:, 0, 0] = np.arange(N_IMAGES)  # the index, readable from any batch
    np.save(path, images)
    return path


def _indices(x: torch.Tensor) -> list[int]:
    """Dataset indices of a batch in [-1, 1] (pixel (0, 0) is index / 127.5 - 1)."""
    return torch.round((x[:, 0, 0, 0] + 1) * 127.5).long().tolist()


class RecordingBatches(Batches):
    """Batches that remember the dataset indices of everything they hand out."""

    def __next__(self):
        x = super().__next__()
        self.seen = getattr(self, "seen", []) + [_indices(x)]
        return x


def _config(run_dir: Path, data: Path, steps: int, **over) -> TrainConfig:
    kw = dict(run_dir=str(run_dir), model=preset("tiny"), schedule=ScheduleConfig(num_timesteps=20),
              data=DataConfig(source=str(data), image_size=8), batch_size=BATCH, grad_accum=ACCUM, steps=steps,
              lr=1e-3, warmup_steps=0, ema_decay=0.9, seed=3, log_every=1, sample_every=1000, checkpoint_every=2,
              preview_samples=2, preview_steps=2, device="cpu", progress=False)
    kw.update(over)
    return TrainConfig(**kw)


def _instrument(tr: Trainer) -> dict:
    """Record, per step, this rank's loss and the gradient the optimizer is about to use, and the step of every
    gradient all-reduce DDP starts."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    rec = {"loss": [], "grads": [], "allreduce_steps": []}

    def counting_allreduce(state, bucket):
        rec["allreduce_steps"].append(tr.step)
        return allreduce_hook(state, bucket)
    tr.ddp.register_comm_hook(None, counting_allreduce)
    tr.batches.__class__ = RecordingBatches
    accumulate, apply = tr.accumulate_gradients, tr.apply_gradients

    def accumulate_and_record():
        loss = accumulate()
        rec["loss"].append(float(loss))
        return loss

    def record_and_apply():
        rec["grads"].append([p.grad.detach().clone() for p in tr.model.parameters()])
        return apply()
    tr.accumulate_gradients, tr.apply_gradients = accumulate_and_record, record_and_apply
    return rec


# ------------------------------------------------------------------------------------------- workers

def _job_train(rank: int, out: Path, data: Path) -> dict:
    """Run A: 4 steps straight.  Run B: 2 steps, then resume (same world size) to 4."""
    a = Trainer(_config(out / "a", data, steps=4))
    probe = torch.Generator().manual_seed(0)
    probe.set_state(a.gen.get_state())
    first_noise = torch.randn(64, generator=probe)  # what this rank's t/eps stream starts with
    rec = _instrument(a)
    a.run()
    result = {"first_noise": first_noise, "seen": a.batches.seen, **rec,
              "model": {k: v.clone() for k, v in a.model.state_dict().items()},
              "ema": {k: v.clone() for k, v in a.ema.state_dict().items()}}
    Trainer(_config(out / "b", data, steps=2)).run()
    b = Trainer(_config(out / "b", data, steps=4), resume=True)
    b.run()
    result["b_model"] = {k: v.clone() for k, v in b.model.state_dict().items()}
    return result


def _job_fail(rank: int, out: Path, data: Path, mode: str) -> dict:
    """Rank 1 dies (``die``) or stops answering (``stall``) in step 3; rank 0 must stop with an error."""
    if rank == 1:
        apply = Trainer.apply_gradients

        def faulty(self):
            if self.step == 2:
                (out / "failed_at").write_text(repr(time.time()))
                if mode == "die":
                    os._exit(3)
                time.sleep(120)
            return apply(self)
        Trainer.apply_gradients = faulty
    try:
        train(_config(out / "run", data, steps=50, checkpoint_every=1))
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e), "stopped_at": time.time()}
    return {"type": None}


JOBS = {"train": _job_train, "fail": _job_fail}


def _worker(rank: int, world_size: int, port: int, timeout_s: float, job: str, out: str, args: tuple):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), **{distributed.TIMEOUT_ENV: str(timeout_s)})
    out = Path(out)
    distributed.setup("cpu")
    try:
        result = JOBS[job](rank, out, *args)
    finally:
        distributed.teardown()
    torch.save(result, out / f"result_rank{rank}.pt")


def _spawn(job: str, out: Path, args: tuple, timeout_s: float, wait_s: float, grace_s: float = 15,
           world_size: int = 2) -> list:
    """Start ``world_size`` ranks; wait up to ``wait_s`` for rank 0 and ``grace_s`` more for the others; kill
    whatever is left; return the processes."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, timeout_s, job, str(out), args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        procs[0].join(wait_s)
        for p in procs[1:]:
            p.join(grace_s if not procs[0].is_alive() else 0)
    finally:
        alive = [p.is_alive() for p in procs]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert not alive[0], f"rank 0 still running after {wait_s} s"
    return procs


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """The 2-rank job, run once per test session: under pytest-xdist the workers share it through a folder in
    the session's common temporary root and a file lock (filelock comes with torch)."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "ddp_two_ranks"
    with FileLock(str(out) + ".lock"):
        if not (out / "done").is_file():
            shutil.rmtree(out, ignore_errors=True)  # what a failed attempt may have left
            out.mkdir()
            data = _make_data(out / "indexed.npy")
            procs = _spawn("train", out, (data,), timeout_s=120, wait_s=240)
            assert [p.exitcode for p in procs] == [0, 0]
            (out / "done").touch()
    return out, out / "indexed.npy", [torch.load(out / f"result_rank{r}.pt") for r in range(2)]


def test_ranks_hold_identical_weights_and_ema(two_rank_run):
    out, _, (r0, r1) = two_rank_run
    for key in r0["model"]:  # bitwise: same all-reduced gradient, same deterministic update on every rank
        assert torch.equal(r0["model"][key], r1["model"][key]), key
        assert torch.equal(r0["ema"][key], r1["ema"][key]), key
    for g0, g1 in zip(r0["grads"], r1["grads"]):
        assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    # the checkpoint rank 0 wrote holds those weights
    ck = load_checkpoint(out / "a")
    for key, value in ck["ema"].items():
        assert torch.equal(value, r0["ema"][key]), key


def test_ranks_draw_different_noise_and_see_disjoint_shards_covering_the_epoch(two_rank_run):
    _, _, (r0, r1) = two_rank_run
    assert not torch.allclose(r0["first_noise"], r1["first_noise"])
    per_epoch = N_IMAGES // (BATCH * 2)  # micro-batches per rank per epoch
    s0 = [i for b in r0["seen"][:per_epoch] for i in b]
    s1 = [i for b in r1["seen"][:per_epoch] for i in b]
    assert len(set(s0)) == len(s0) == len(set(s1)) == len(s1) == N_IMAGES // 2
    assert not set(s0) & set(s1)
    assert sorted(s0 + s1) == list(range(N_IMAGES))
    # step 4 starts epoch 1: a new permutation, again split without overlap
    e1 = [[i for b in r["seen"][per_epoch:] for i in b] for r in (r0, r1)]
    assert len(e1[0]) == len(e1[1]) == BATCH * ACCUM and not set(e1[0]) & set(e1[1])
    assert e1[0] != s0[:BATCH * ACCUM]


def test_gradient_accumulation_all_reduces_once_per_step(two_rank_run):
    """grad_accum = 2 micro-batches a step, but one all-reduce a step: the first runs under no_sync().  (The tiny
    model's gradients fit in DDP's first 1 MB bucket, so one step is one bucket.)"""
    _, _, (r0, r1) = two_rank_run
    assert r0["allreduce_steps"] == r1["allreduce_steps"] == [0, 1, 2, 3]


def test_logged_loss_is_the_mean_over_ranks(two_rank_run):
    out, _, (r0, r1) = two_rank_run
    rows = read_metrics(out / "a" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # rank 0 alone writes: each step once
    assert all(r["world_size"] == 2 and r["global_batch_size"] == BATCH * ACCUM * 2 for r in rows)
    assert r0["loss"] != r1["loss"]
    for row, a, b in zip(rows, r0["loss"], r1["loss"]):
        assert row["loss"] == pytest.approx((a + b) / 2, rel=1e-6)  # float32 sum of two numbers, then / 2
    cfg = json.loads((out / "a" / "config.json").read_text())
    assert cfg["distributed"] == {"world_size": 2, "backend": "gloo", "batch_size_per_rank": BATCH,
                                  "grad_accum": ACCUM, "global_batch_size": 16}
    assert sorted(p.name for p in (out / "a" / "previews").iterdir()) == ["step_0000004.png"]


def test_matches_single_process_reference_with_the_same_shards_and_noise(two_rank_run, clean_env):
    """One process replays both ranks: rank r's shard and rank r's t/eps stream, gradients averaged, one step.

    DDP must give the same gradients and weights.  Tolerance: the replay computes the same float32 operations
    (one thread, like the workers), and DDP's average g0/2 + g1/2 equals (g0 + g1)/2 exactly in binary floating
    point, so only a different reduction order could separate them, at ~1e-7 relative per operation; rtol 1e-5
    leaves room for that.  The weights take Adam steps of size ~lr = 1e-3 per entry, so atol 1e-6 on them is a
    thousand times tighter than what one mismatched batch or noise draw changes.  The negative control shows a
    single rank's gradient misses by far more than the tolerance."""
    out, data, (r0, _) = two_rank_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _config(out / "reference", data, steps=4)
        ref = Trainer(cfg)
        images = ref.batches.images
        shards = [Batches(images, BATCH, seed=cfg.seed, rank=r, world_size=2) for r in (0, 1)]
        gens = [torch.Generator().manual_seed(cfg.seed + 1),
                torch.Generator().manual_seed(distributed.rank_seed(cfg.seed, 1, "noise"))]
        for step in range(cfg.steps):
            for group in ref.optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps)
            per_rank = []
            for r in (0, 1):
                ref.batches, ref.gen = shards[r], gens[r]
                ref.optimizer.zero_grad(set_to_none=True)
                ref.accumulate_gradients()
                per_rank.append([p.grad.clone() for p in ref.model.parameters()])
            for p, g0, g1 in zip(ref.model.parameters(), *per_rank):
                p.grad = (g0 + g1) / 2
            for mine, ddp in zip(ref.model.parameters(), r0["grads"][step]):
                torch.testing.assert_close(ddp, mine.grad, rtol=1e-5, atol=1e-7)
            if step == 0:  # negative control: rank 0's own gradient is far from the average
                worst = max(float((a - b).abs().max() / b.abs().max())
                            for a, b in zip(per_rank[0], r0["grads"][0]) if b.abs().max() > 0)
                assert worst > 1e-2
            ref.apply_gradients()
    finally:
        torch.set_num_threads(threads)
    for key, value in ref.model.state_dict().items():
        torch.testing.assert_close(r0["model"][key], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(r0["ema"][key], ref.ema.state_dict()[key], rtol=0, atol=1e-6)


def test_same_world_size_resume_is_exact(two_rank_run):
    out, _, (r0, _) = two_rank_run
    a, b = read_metrics(out / "a" / "metrics.jsonl"), read_metrics(out / "b" / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for key, value in r0["model"].items():
        assert torch.equal(value, r0["b_model"][key]), key


def test_two_rank_checkpoint_resumes_on_one_rank_where_the_epoch_left_off(two_rank_run, clean_env, tmp_path):
    """Saved at step 4 on 2 ranks: epoch 1, 16 of its 48 images used.  One rank continues the same permutation
    from image 16: the next 32 images it draws are exactly the rest of epoch 1."""
    out, data, (r0, r1) = two_rank_run
    run = tmp_path / "a"
    shutil.copytree(out / "a", run)
    tr = Trainer(_config(run, data, steps=8), resume=True)
    assert tr.world.world_size == 1 and tr.step == 4 and tr.global_batch_size == BATCH * ACCUM
    tr.batches.__class__ = RecordingBatches
    tr.run()
    per_epoch = N_IMAGES // (BATCH * 2)
    used = {i for r in (r0, r1) for b in r["seen"][per_epoch:] for i in b}
    rest = [i for b in tr.batches.seen[:(N_IMAGES - len(used)) // BATCH] for i in b]
    assert len(used) == 16 and len(rest) == len(set(rest)) == 32
    assert used | set(rest) == set(range(N_IMAGES))
    assert (tr.batches.epoch, tr.batches.position) == (1, N_IMAGES // BATCH)  # epoch 1 used up, nothing beyond
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["world_size"] for r in rows] == [2] * 4 + [1] * 4
    assert json.loads((run / "config.json").read_text())["distributed"]["world_size"] == 1
    assert latest_checkpoint(run).name == "step_0000008"
    saved = load_checkpoint(run)["trainer"]
    assert saved["world_size"] == 1 and "ranks" not in saved


def test_reshard_rule():
    """Unit check of the rule, including a global position that is no multiple of the new global batch."""
    state = {"seed": 1, "epoch": 2, "position": 3, "batch_size": 4, "world_size": 2}  # 24 images consumed
    assert distributed.reshard_data_state(state, batch_size=4, world_size=1, batches_per_epoch=12) == \
        {**state, "position": 6, "world_size": 1}
    # 3 ranks x 4 = 12 per batch: ceil(24 / 12) = 2 exactly; 5 ranks x 4 = 20: round up to 2 (4 images skipped)
    assert distributed.reshard_data_state(state, batch_size=4, world_size=3, batches_per_epoch=4)["position"] == 2
    assert distributed.reshard_data_state(state, batch_size=4, world_size=5, batches_per_epoch=2) == \
        {**state, "epoch": 3, "position": 0, "world_size": 5}
    # consistent with Batches: resuming there yields the permutation from the first unused multiple on
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    one = Batches(images, 4, seed=7, world_size=1)
    order = one.epoch_order(0)[0].tolist()
    two = [Batches(images, 4, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for b in two:
        next(b), next(b)  # 16 consumed in all
    moved = distributed.reshard_data_state(two[0].state_dict(), batch_size=4, world_size=1,
                                           batches_per_epoch=len(one))
    one.load_state_dict(moved)
    drawn = torch.round((next(one)[:, 0, 0, 0] + 1) * 127.5).long().tolist()
    assert drawn == order[16:20]
    with pytest.raises(DataError):  # Batches itself still refuses an untranslated state
        Batches(images, 4, seed=7, world_size=1).load_state_dict(two[0].state_dict())


def test_rank_seeds_differ_and_environment_is_read(monkeypatch, clean_env):
    seeds = {distributed.rank_seed(0, r, s, k) for r in range(8) for s in ("noise", "dropout") for k in (0, 5)}
    assert len(seeds) == 32
    assert distributed.setup("cpu") == distributed.World()  # no torchrun variables: one process, no group
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "7")
    with pytest.raises(distributed.DistributedError, match="RANK"):
        distributed.setup("cpu")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.DistributedError, match=distributed.TIMEOUT_ENV):
        distributed.timeout_seconds()
    with pytest.raises(distributed.DistributedError, match="every rank on one GPU"):
        distributed.pick_device("cuda:1", 0, 2)


@pytest.mark.parametrize("mode", ["die", "stall"])
def test_a_failed_rank_makes_the_other_exit_with_a_message(tmp_path, mode):
    """Rank 1 exits (or hangs) in step 3.  Rank 0 must raise DistributedError: at once when the peer's socket
    closes, after the 5 s timeout when it merely stops answering; the last checkpoint must load."""
    data = _make_data(tmp_path / "indexed.npy")
    timeout = 5.0
    procs = _spawn("fail", tmp_path, (data, mode), timeout_s=timeout, wait_s=90, grace_s=0)
    # rank 0 ended (no hang).  Its exit status is not checked: after a timed-out gloo operation the process
    # sometimes aborts at interpreter exit (gloo's pending I/O thread), which is after the result below was saved
    assert procs[0].exitcode is not None
    res = torch.load(tmp_path / "result_rank0.pt")
    assert res["type"] == "DistributedError", res
    waited = res["stopped_at"] - float((tmp_path / "failed_at").read_text())
    if mode == "die":  # a closed socket is noticed at once, long before the timeout
        assert waited < timeout
    else:  # the wait is the timeout, plus (allowance for a loaded 2-core machine) seconds of bookkeeping
        assert 0.9 * timeout < waited < timeout + 10
    assert "rank 0 of 2" in res["message"] and "lost contact" in res["message"]
    assert f"--resume {tmp_path / 'run'}" in res["message"]
    ck = load_checkpoint(tmp_path / "run")
    assert ck["trainer"]["step"] == 2 and len(ck["trainer"]["ranks"]) == 2


def test_torchrun_cli_end_to_end_then_resume_on_one_rank(tmp_path, clean_env):
    """``python -m torch.distributed.run --nproc_per_node=2 -m ddpm train ...``, then ``ddpm train --resume`` in one
    process."""
    data = _make_data(tmp_path / "indexed.npy")
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS="1", **{distributed.TIMEOUT_ENV: "60"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "ddpm", "train", "--preset", "tiny", "--data", str(data), "--image-size", "8", "--timesteps", "20",
           "--batch-size", "4", "--steps", "3", "--log-every", "1", "--checkpoint-every", "3", "--sample-every",
           "1000", "--run-dir", str(run), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["distributed"]["world_size"] == 2 and cfg["distributed"]["global_batch_size"] == 8
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    saved = load_checkpoint(run)["trainer"]
    assert saved["world_size"] == 2 and saved["data"]["world_size"] == 2 and len(saved["ranks"]) == 2
    assert not torch.equal(saved["ranks"][0]["generator"], saved["ranks"][1]["generator"])

    from ddpm.cli.main import main
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["global_batch_size"] for r in rows] == [8, 8, 8, 4, 4]
    assert all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_here_is_refused_by_name():
    for name, needle in [("cuda", "no CUDA GPU"), ("cuda:3", "no CUDA GPU"), ("tpu0", "not a device name")]:
        with pytest.raises(distributed.DeviceError, match=needle):
            distributed.resolve_device(name)
    assert distributed.resolve_device("cpu") == torch.device("cpu")
