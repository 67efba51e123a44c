"""The training loop (Algorithm 1 of Ho et al. 2020): optimiser, EMA, checkpoints, logging.

No argument parsing here: :func:`train` takes a :class:`~ddpm.runs.config.TrainConfig`.

Per step: x_0 from the data, t ~ Uniform{1..T} (0-based in code), eps ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), and a gradient step on
||eps - eps_theta(x_t, t)||^2 (eq. 14), or on L_vlb / L_hybrid when the config asks.

Data parallel (``torchrun --nproc_per_node=N -m ddpm train ...``; see :mod:`ddpm.runtime.distributed`): every rank holds
the same weights, reads its own strided shard of the same per-epoch permutation, draws its own t and eps, and
DistributedDataParallel averages the gradients, so one optimisation step sees a global batch of
``batch_size * grad_accum * world_size`` images.  Rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..core.diffusion import loss_simple, q_sample, sample_timesteps
from ..core.likelihood import TrainingVLB
from ..core.schedule import make_schedule
from ..data import datasets as data_mod
from ..data.batches import Batches
from ..model.unet import UNet
from ..runs.checkpoint import (
    CheckpointError,
    load_checkpoint,
    mismatch_summary,
    save_checkpoint,
)
from ..runs.config import TrainConfig
from ..runs.plots import plot_loss_curve
from ..runs.rundir import lock_run_dir, read_metrics
from ..runtime import distributed
from ..runtime.atomic import atomic_write_path, write_json_atomic
from ..runtime.precision import auto_compile, autocast_dtype
from .previews import write_preview
from .rates import ema_decay_at, lr_at

__all__ = ["train", "Trainer"]


class Trainer:
    """Holds a run's live state: model, EMA, optimizer, data order and RNGs.  ``run()`` trains to ``config.steps``.

    ``world`` says which rank this process is (default: read from the environment by
    :func:`ddpm.runtime.distributed.setup`, which also starts the process group under torchrun).  Random streams:
    model init uses ``seed`` on every rank (DDP also broadcasts rank 0's weights); t and eps come from
    ``self.gen``, seeded ``seed + 1`` on rank 0 (the single-process stream) and by
    :func:`~ddpm.runtime.distributed.rank_seed` on the other ranks; dropout uses the global torch RNG, re-seeded per
    rank the same way after init, so no two ranks draw the same noise.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, world: distributed.World | None = None):
        self.config = config
        self.run_dir = Path(config.run_dir)
        if not resume and any((self.run_dir / "checkpoints").glob("step_*")):  # before any work
            raise CheckpointError(f"{self.run_dir}: already holds a run; resume it (ddpm train --resume "
                                  f"{self.run_dir}) or pick another run folder")
        self.world = world if world is not None else distributed.setup(config.device)
        self._lock = None
        self.device = self.world.device
        self.schedule = make_schedule(config.schedule)
        # refuse bad input before any work: data, image size vs the U-Net's downsampling
        data_mod.check_image_size(config.data.image_size, config.model.size_divisor)
        images = data_mod.load_images(config.data, progress=config.progress and self.world.is_main)
        self.num_images = len(images)
        if self.num_images < config.batch_size:
            raise data_mod.DataError(f"{config.data.source}: {self.num_images} images, fewer than the batch size "
                                     f"{config.batch_size}; lower --batch-size")

        rank = self.world.rank
        torch.manual_seed(config.seed)  # model init (identical on every rank) and rank 0's dropout
        self.model = UNet(config.model).to(self.device)
        if rank > 0:
            torch.manual_seed(distributed.rank_seed(config.seed, rank, "dropout"))
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.use_bf16 = self._autocast_dtype() is not None
        if self._want("channels_last"):
            self.model = self.model.to(memory_format=torch.channels_last)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           **({"fused": True} if fused else {}))
        # same seed on every rank: the ranks read disjoint strided shards of one permutation per epoch
        self.batches = Batches(images, batch_size=config.batch_size, seed=config.seed, hflip=config.data.hflip,
                               device=self.device, rank=rank, world_size=self.world.world_size)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(config.seed + 1 if rank == 0 else distributed.rank_seed(config.seed, rank, "noise"))
        self.step = 0
        self.vlb = None
        if config.loss != "simple":
            self.vlb = TrainingVLB(self.schedule, config.loss, config.variance, config.hybrid_lambda,
                                   config.importance_sampling)
        # a second training in an existing folder (a resume while the first still runs) is refused here, before
        # the folder is read or tidied; a fresh folder is locked when run() makes it
        if self.world.is_main and self.run_dir.is_dir():
            self._lock = lock_run_dir(self.run_dir)
        try:
            if resume:
                self._restore()
            if self.world.is_main:
                self._tidy_run_dir()
            # wrap after restoring, so DDP's broadcast of rank 0's weights at construction changes nothing
            self.ddp = None
            if self.world.enabled:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.ddp = DistributedDataParallel(self.model, device_ids=ids, output_device=ids[0] if ids else None)
        except BaseException:
            self.close()
            raise
        self._eager = self.ddp if self.ddp is not None else self.model
        self.forward = torch.compile(self._eager) if self._want("compile") else self._eager
        # compile="auto" means "where it works": a first compiled call that fails falls back to eager
        self._compile_unproven = self.forward is not self._eager and config.compile == "auto"

    def close(self) -> None:
        """Release the run folder's lock (``run()`` does so when it ends); a later ``run()`` takes it again."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def global_batch_size(self) -> int:
        """Images per optimisation step over all ranks: batch_size (per rank) * grad_accum * world_size."""
        return self.config.batch_size * self.config.grad_accum * self.world.world_size

    # -- hardware choices -------------------------------------------------------------------------
    def _want(self, flag: str) -> bool:
        """``auto`` settings: channels_last everywhere (measured faster on CPU too, docs/performance.md);
        torch.compile on CUDA with Triton only (on CPU its compile time outweighs a 10-minute run)."""
        value = getattr(self.config, flag)
        if value == "auto":
            return flag == "channels_last" or auto_compile(self.device)
        return value in (True, "on", "true", "yes")

    def _network(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward(x_t, t)

    def _first_compiled_gradients(self) -> torch.Tensor:
        """:meth:`accumulate_gradients` on the first step of compile="auto": if the compiled forward or its
        backward (compiled lazily, at the first ``backward()``) fails, warn and redo the step eagerly."""
        try:
            return self.accumulate_gradients()
        except Exception as e:  # noqa: BLE001 - any compiler failure; a real error recurs in eager mode below
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"torch.compile failed on the first step ({type(e).__name__}: {reason}); training "
                          f"without it (--compile off skips the attempt)", RuntimeWarning, stacklevel=3)
            self.forward = self._eager
            self.optimizer.zero_grad(set_to_none=True)
            return self.accumulate_gradients()
        finally:
            self._compile_unproven = False

    def _autocast_dtype(self):
        return autocast_dtype(self.device, self.config.precision)

    def _autocast(self):
        dtype = self._autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # -- state -------------------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        """This rank's own random state: its t/eps generator, the torch RNG (dropout), and the VLB history."""
        state = {"generator": self.gen.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":  # the training GPU's only: a run resumes on a machine with fewer GPUs
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.vlb is not None:
            state["vlb"] = self.vlb.state_dict()
        return state

    def trainer_state(self) -> dict:
        """Everything but the weights.  Collective when distributed: every rank must call it, since it gathers
        each rank's random state into ``ranks`` (rank 0's is also kept at the top level, as in a 1-rank run)."""
        ranks = distributed.gather_objects(self._rank_state(), self.world)
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "data": self.batches.state_dict(),
                 "world_size": self.world.world_size, **ranks[0]}
        if self.world.enabled:
            state["ranks"] = ranks
        return state

    def _restore(self):
        ck = load_checkpoint(self.run_dir, fallback=True)
        saved = ck["config"]
        for key in ("model", "schedule", "variance", "loss"):
            if json.dumps(saved.get(key), sort_keys=True) != json.dumps(self.config.to_dict()[key], sort_keys=True):
                raise CheckpointError(f"{ck['path']}: saved {key} config differs from the requested one; "
                                      "resume with the run's own config.json")
        try:
            self.model.load_state_dict(ck["model"])
            self.ema.load_state_dict(ck["ema"])
        except RuntimeError as e:
            raise CheckpointError(f"{ck['path']}: weights do not fit this model ({mismatch_summary(e)})") from None
        tr = ck["trainer"]
        missing = [k for k in ("step", "optimizer", "data") if k not in tr]
        if missing:
            raise CheckpointError(f"{ck['path']}/trainer.pt: no {', '.join(missing)} in the trainer state; not a "
                                  "checkpoint ddpm train wrote")
        try:
            self.optimizer.load_state_dict(tr["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ck['path']}: optimizer state does not fit this model ({e})") from None
        self.step = int(tr["step"])
        if self.world.is_main and self.step < self.config.steps:
            print(f"resuming {self.run_dir} from step {self.step} of {self.config.steps}", flush=True)
        world, seed = self.world, self.config.seed
        data_state = tr["data"]
        if int(data_state.get("world_size", 1)) != world.world_size:
            data_state = distributed.reshard_data_state(data_state, batch_size=self.batches.batch_size,
                                                        world_size=world.world_size,
                                                        batches_per_epoch=len(self.batches))
        self.batches.load_state_dict(data_state)
        if int(tr.get("world_size", 1)) == world.world_size:
            # same world size: every rank continues its own streams exactly
            mine = tr["ranks"][world.rank] if world.enabled else tr
            self.gen.set_state(mine["generator"])
            torch.set_rng_state(mine["torch_rng"])
            if "cuda_rng" in mine and self.device.type == "cuda":
                rng, index = mine["cuda_rng"], self.device.index or 0
                if isinstance(rng, (list, tuple)):  # saved by an older version: one state per visible GPU
                    rng = rng[index] if index < len(rng) else None
                if rng is not None:
                    torch.cuda.set_rng_state(rng, self.device)
            if self.vlb is not None and "vlb" in mine:
                self.vlb.load_state_dict(mine["vlb"])
        else:
            # another world size: fresh streams per rank, a function of (seed, rank, step); the t-sampling
            # history of rank 0 seeds every rank's
            self.gen.manual_seed(distributed.rank_seed(seed, world.rank, "noise", self.step))
            torch.manual_seed(distributed.rank_seed(seed, world.rank, "dropout", self.step))
            if self.vlb is not None and "vlb" in tr:
                self.vlb.load_state_dict(tr["vlb"])

    def _tidy_run_dir(self):
        """Make the folder read as one run up to ``self.step``: metric rows and previews logged after it go (a
        resume repeats those steps; a fresh start in a folder left by a run that died before its first
        checkpoint is at step 0), and so do the temporary folders of saves that were killed midway."""
        self._truncate_metrics()
        for old in (self.run_dir / "previews").glob("step_*.png"):
            if old.stem[5:].isdigit() and int(old.stem[5:]) > self.step:
                old.unlink()
        for pattern in (".tmp_step_*", ".old_step_*"):
            for leftover in (self.run_dir / "checkpoints").glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
        loss_png = self.run_dir / "loss.png"
        if loss_png.is_file():
            rows = read_metrics(self.run_dir / "metrics.jsonl") if self.step else []
            if rows:
                plot_loss_curve(rows, loss_png)
            else:
                loss_png.unlink()

    def _truncate_metrics(self):
        """Drop metric rows logged after the restored checkpoint, so the log reads as one uninterrupted run."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            rows = [r for r in read_metrics(path) if r["step"] <= self.step]
            with atomic_write_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config_record(self) -> dict:
        """The config as saved in ``config.json``, plus how the run is spread over processes (for reading only;
        :meth:`TrainConfig.from_dict` ignores the extra key)."""
        return {**self.config.to_dict(),
                "distributed": {"world_size": self.world.world_size, "backend": self.world.backend,
                                "batch_size_per_rank": self.config.batch_size, "grad_accum": self.config.grad_accum,
                                "global_batch_size": self.global_batch_size}}

    def save(self):
        """Write a checkpoint.  Collective when distributed: every rank calls it, rank 0 writes, and no rank
        leaves before the checkpoint is complete."""
        state = self.trainer_state()
        if self.world.is_main:
            save_checkpoint(self.run_dir, self.step, model=self.model, ema=self.ema, trainer_state=state,
                            config=self.config_record(), keep=self.config.keep_checkpoints)
        distributed.barrier(self.world)

    # -- one optimisation step -------------------------------------------------------------------
    def _loss(self, x0: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        weights = None
        if self.vlb is not None and self.vlb.importance is not None:
            t, weights = self.vlb.importance.sample(n, self.gen, self.device)
        else:
            t = sample_timesteps(n, self.schedule.num_timesteps, self.gen, self.device)
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        x_t = q_sample(self.schedule, x0, t, noise)
        if self._want("channels_last"):
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self._network(x_t, t)
        if self.vlb is None:
            return loss_simple(out, noise, self.config.variance)
        return self.vlb.loss(out.float(), noise, x0, x_t, t, weights)

    def accumulate_gradients(self) -> torch.Tensor:
        """Forward and backward over ``grad_accum`` micro-batches; returns this rank's mean loss.

        Distributed, the gradients are all-reduced (averaged over ranks) once, during the backward pass of the
        last micro-batch: the others run under ``no_sync()``."""
        cfg = self.config
        self.model.train()
        total = torch.zeros((), device=self.device)
        for i in range(cfg.grad_accum):
            last = i == cfg.grad_accum - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                loss = self._loss(next(self.batches)) / cfg.grad_accum
                loss.backward()
            total += loss.detach()
        return total

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps)
        total = self._first_compiled_gradients() if self._compile_unproven else self.accumulate_gradients()
        return total, self.apply_gradients()

    def apply_gradients(self) -> torch.Tensor:
        """Clip, take the optimizer step, update the EMA, advance ``step``; returns the pre-clip gradient norm.
        The gradients are the same on every rank, and so are the weights and the EMA afterwards."""
        cfg = self.config
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return grad_norm

    @torch.no_grad()
    def _update_ema(self):
        decay = ema_decay_at(self.step, self.config.ema_decay)
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.model.parameters()], 1.0 - decay)
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg, world = self.config, self.world
        main = world.is_main  # only rank 0 writes files and shows progress
        metrics, bar = None, None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = self._lock or lock_run_dir(self.run_dir)
            write_json_atomic(self.run_dir / "config.json", self.config_record())
            metrics = (self.run_dir / "metrics.jsonl").open("a")
        if main and self.step < cfg.steps:
            how = ", ".join(["bf16 autocast" if self.use_bf16 else "fp32"]
                            + (["channels_last"] if self._want("channels_last") else [])
                            + (["compiled"] if self.forward is not self._eager else []))
            print(f"training {self.run_dir}: steps {self.step + 1}-{cfg.steps}, {self.global_batch_size} images a "
                  f"step from {self.num_images} ({cfg.data.source}), {self.device} ({how})", flush=True)
        if main and cfg.progress:
            desc = "training" if not world.enabled else \
                f"training ({world.world_size} ranks, global batch {self.global_batch_size})"
            bar = tqdm(total=cfg.steps, initial=self.step, desc=desc, unit="step", dynamic_ncols=True)
        loss_sum = torch.zeros((), device=self.device)
        n_logged, t_last, img_last = 0, time.perf_counter(), 0
        try:
            while self.step < cfg.steps:
                loss, grad_norm = self.train_step()
                loss_sum += loss
                n_logged += 1
                img_last += self.global_batch_size
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    # mean over the interval and over ranks: the one all-reduce and host sync per log interval
                    mean_loss = distributed.mean_over_ranks(loss_sum / n_logged, world).item()
                    if not math.isfinite(mean_loss):  # every rank sees the same mean, so all stop together
                        raise FloatingPointError(f"loss became {mean_loss} at step {self.step}; lower --lr")
                    row = {"step": self.step, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
                           "grad_norm": float(grad_norm), "img_per_s": img_last / max(now - t_last, 1e-9),
                           "world_size": world.world_size, "global_batch_size": self.global_batch_size,
                           "time": time.time()}
                    if metrics is not None:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{row['img_per_s']:.0f}")
                    loss_sum.zero_()
                    n_logged, t_last, img_last = 0, time.perf_counter(), 0
                # img/s counts training time only: the clock of the current interval skips previews and saves
                paused = time.perf_counter()
                if main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    if cfg.preview_samples:  # 0: no preview grids, only the loss curve
                        write_preview(self)
                    plot_loss_curve(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss.png")
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                t_last += time.perf_counter() - paused
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
            self.close()
        return self.run_dir


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train (or resume, when ``resume`` and the run folder holds a checkpoint) and return the run folder.

    Under torchrun this also starts and, at the end, destroys the process group.  If this rank fails, it says so
    on stderr (which rank, and that the last checkpoint is intact); a failed exchange with another rank (it
    crashed or timed out) is raised as :class:`~ddpm.runtime.distributed.DistributedError`."""
    world = distributed.setup(config.device)
    try:
        return Trainer(config, resume=resume, world=world).run()
    except Exception as e:
        if not world.enabled:
            raise
        message = distributed.failure_message(e, world, config.run_dir)
        if distributed.is_communication_error(e):
            raise distributed.DistributedError(message) from e
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise
    finally:
        with contextlib.suppress(Exception):  # a broken group must not hide the error that broke it
            distributed.teardown()
