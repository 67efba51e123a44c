"""The training loop (Algorithm 1 of Ho et al. 2020): optimiser, EMA, checkpoints, logging.

No argument parsing here: :func:`train` takes a :class:`~ddpm.runs.config.TrainConfig`.

Per step: x_0 from the data, t ~ Uniform{1..T} (0-based in code), eps ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), and a gradient step on
||eps - eps_theta(x_t, t)||^2 (eq. 14), or on L_vlb / L_hybrid when the config asks.

Class-conditional runs (``data.class_cond``) also take each image's label y, replaced by "no class" with
probability ``label_dropout`` (a coin per image from the trainer's generator, after t and eps), and train
eps_theta(x_t, t, y): one network for the conditional and the unconditional predictor (Ho & Salimans 2022,
Algorithm 1).

Data parallel (``torchrun --nproc_per_node=N -m ddpm train ...``; see :mod:`ddpm.runtime.distributed`): every rank holds
the same weights, reads its own strided shard of the same per-epoch permutation, draws its own t and eps, and
DistributedDataParallel averages the gradients, so one optimisation step sees a global batch of
``batch_size * grad_accum * world_size`` images.  Rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from ..core.schedule import make_schedule
from ..data import datasets as data_mod
from ..data.batches import Batches
from ..data.labels import load_labels
from ..model.unet import UNet
from ..runs.checkpoint import (
    CheckpointError,
    mark_best,
    save_checkpoint,
)
from ..runs.config import TrainConfig
from ..runs.plots import plot_loss_curve
from ..runs.rundir import lock_run_dir, read_metrics, tidy_run_dir
from ..runtime import distributed
from ..runtime.atomic import write_json_atomic
from ..runtime.governor import governor_for
from ..runtime.precision import auto_compile, autocast_dtype
from ..sampling.stored import store_default_estimates
from .ema import POWER_EMA_FILE, ExtraEMAs, PowerEMA, ema_step
from .finetune import load_initial_weights
from .log import TrainingLog
from .loggers import Logger, Loggers, make_loggers
from .loss import build_loss
from .previews import write_preview
from .quality import Evaluator, evaluate_now
from .rates import ema_decay_at, lr_at
from .resume import restore, trainer_state

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

    def __init__(self, config: TrainConfig, resume: bool = False, world: distributed.World | None = None,
                 evaluator: Evaluator | None = None):
        self.config = config
        self.evaluator = evaluator  # run -> quality row (the CLI builds it from ddpm.evaluation; None: no eval)
        self.best: float | None = None  # the best FD so far (lower is better), kept in trainer.pt
        self.run_dir = Path(config.run_dir)
        if not resume and any((self.run_dir / "checkpoints").glob("step_*")):  # before any work
            raise CheckpointError(f"{self.run_dir}: already holds a run; resume it (ddpm train --resume "
                                  f"{self.run_dir}) or pick another run folder")
        self.world = world if world is not None else distributed.setup(config.device)
        self._lock = None
        self.device = self.world.device
        self.threads = governor_for(self.device)
        self.schedule = make_schedule(config.schedule)
        # refuse bad input before any work: data, image size vs the U-Net's downsampling
        data_mod.check_image_size(config.data.image_size, config.model.size_divisor)
        images = data_mod.open_images(config.data, config.data_cache, progress=config.progress and self.world.is_main)
        self.num_images = len(images)
        if self.num_images < config.batch_size:
            raise data_mod.DataError(f"{config.data.source}: {self.num_images} images, fewer than the batch size "
                                     f"{config.batch_size}; lower --batch-size")
        labels = None
        if config.data.class_cond:
            labels, names = load_labels(config.data)
            if config.data.class_names is not None and tuple(config.data.class_names) != names:
                raise data_mod.DataError(f"{config.data.source}: holds the classes {', '.join(names)}, but the run "
                                         f"was made for {', '.join(config.data.class_names)}; use the run's own data")
            self.config = config = config.with_class_names(names)

        rank = self.world.rank
        torch.manual_seed(config.seed)  # model init (identical on every rank) and rank 0's dropout
        self.model = UNet(config.model).to(self.device)
        if config.init_from and not resume:  # fine-tuning: start from another run's weights (EMA copied below)
            load_initial_weights(self.model, config.init_from)
        if rank > 0:
            torch.manual_seed(distributed.rank_seed(config.seed, rank, "dropout"))
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._init_extra_emas()
        # fp16's narrow range lets small gradients underflow to 0: scale the loss up, and the gradients back down
        # before clipping (a pass-through for every other precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self._autocast_dtype() is torch.float16)
        if self._want("channels_last"):
            self.model = self.model.to(memory_format=torch.channels_last)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           **({"fused": True} if fused else {}))
        # same seed on every rank: the ranks read disjoint strided shards of one permutation per epoch
        self.batches = Batches(images, batch_size=config.batch_size, seed=config.seed, hflip=config.data.hflip,
                               device=self.device, rank=rank, world_size=self.world.world_size, labels=labels)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(config.seed + 1 if rank == 0 else distributed.rank_seed(config.seed, rank, "noise"))
        self.step = 0
        self.loss_fn = build_loss(config, self.schedule)  # net, x0, labels, gen -> per-image loss (training/loss.py)
        # a second training in an existing folder (a resume while the first still runs) is refused here, before
        # the folder is read or tidied; a fresh folder is locked when run() makes it
        if self.world.is_main and self.run_dir.is_dir():
            self._lock = lock_run_dir(self.run_dir)
        try:
            if resume:
                restore(self)
            if self.world.is_main:
                tidy_run_dir(self.run_dir, self.step)
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

    def _network(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t, y): y the class labels, None for an unconditional run."""
        return self.forward(x_t, t, y)

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
    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Path:
        """Algorithm 1 until ``config.steps``: each step draws x_0, t and eps and takes a gradient step on the
        loss; every so often a metrics row, a preview grid with the loss curve, and a checkpoint."""
        cfg = self.config
        log = self._start_log()
        try:
            while self.step < cfg.steps:
                loss, grad_norm = self.train_step()
                log.after_step(self.step, loss, grad_norm, self.optimizer.param_groups[0]["lr"],
                               ema_decay_at(self.step - 1, cfg.ema_decay))
                with log.paused():
                    if self.world.is_main and self._due(cfg.sample_every):
                        self._write_pictures(log.loggers)
                    self._write_ema_snapshot()
                    saved = self.evaluator is not None and cfg.eval_every and self._due(cfg.eval_every) \
                        and self._evaluate(log.loggers)
                    if self._due(cfg.checkpoint_every) and not saved:
                        self.save()
        finally:
            log.close()
            self.close()
        return self.run_dir

    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.config.steps

    def _write_pictures(self, loggers: Logger) -> None:
        if self.config.preview_samples:  # 0: no preview grids, only the loss curve
            loggers.image(self.step, "previews", _read_png(write_preview(self)))
        plot_loss_curve(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss.png")

    def _evaluate(self, loggers: Logger) -> bool:
        """Measure quality now (rank 0; the others wait) and, when the FD is the best so far, save a checkpoint and
        point ``checkpoints/best`` at it.  Collective when distributed; returns whether it saved."""
        fd = evaluate_now(self, loggers) if self.world.is_main else None
        improved = fd is not None and (self.best is None or fd < self.best)
        if self.world.enabled:  # rank 0 decides: the mean of (1 on rank 0, 0 elsewhere) is > 0 iff it improved
            flag = torch.tensor(float(improved) if self.world.is_main else 0.0, device=self.device)
            improved = distributed.mean_over_ranks(flag, self.world).item() > 0
        if not improved:
            return False
        self.best = fd
        self.save()
        if self.world.is_main:
            mark_best(self.run_dir, self.step, self.config.keep_checkpoints)
        return True

    def _start_log(self) -> TrainingLog:
        """Rank 0 makes and locks the folder, writes config.json and says what it starts; every rank logs."""
        cfg, world = self.config, self.world
        if world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = self._lock or lock_run_dir(self.run_dir)
            write_json_atomic(self.run_dir / "config.json", self.config_record())
            if self.step < cfg.steps:
                how = ", ".join([{None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast with "
                                  "a gradient scaler"}[self._autocast_dtype()]]
                                + (["channels_last"] if self._want("channels_last") else [])
                                + (["compiled"] if self.forward is not self._eager else []))
                print(f"training {self.run_dir}: steps {self.step + 1}-{cfg.steps}, {self.global_batch_size} images "
                      f"a step from {self.num_images} ({cfg.data.source}), {self.device} ({how})", flush=True)
        desc = "training" if not world.enabled else \
            f"training ({world.world_size} ranks, global batch {self.global_batch_size})"
        loggers = make_loggers(cfg.loggers, self.run_dir, config=self.config_record(), first_step=self.step) \
            if world.is_main and self.step < cfg.steps else Loggers()  # only rank 0 logs
        return TrainingLog(self.run_dir, world=world, steps=cfg.steps, first_step=self.step, log_every=cfg.log_every,
                           global_batch_size=self.global_batch_size, device=self.device, progress=cfg.progress,
                           desc=desc, loggers=loggers)

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
        state = trainer_state(self)
        if self.world.is_main:
            final = save_checkpoint(self.run_dir, self.step, model=self.model, ema=self.ema, trainer_state=state,
                                    config=self.config_record(), keep=self.config.keep_checkpoints,
                                    extra_weights=self._extra_ema_weights())
            if self.step == self.config.steps:  # the analytic variance of the default draws, stored beside the weights
                store_default_estimates(final, self.device)
        distributed.barrier(self.world)

    # -- one optimisation step -------------------------------------------------------------------
    def _loss(self, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The batch mean of :attr:`loss_fn`'s per-image loss, t, eps and label coins drawn from ``self.gen``."""
        return self.loss_fn.mean(self._call_network, x0, y, self.gen)

    def _call_network(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self._want("channels_last"):
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self._network(x_t, t, y)

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
                batch = next(self.batches)  # images, or (images, labels) for a class-conditional run
                loss = (self._loss(*batch) if isinstance(batch, tuple) else self._loss(batch)) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        return total

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        self.threads.tick()  # the thread count follows the cores other programs leave free (runtime/governor.py)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.steps)
        total = self._first_compiled_gradients() if self._compile_unproven else self.accumulate_gradients()
        return total, self.apply_gradients()

    def apply_gradients(self) -> torch.Tensor:
        """Clip, take the optimizer step, update the EMA, advance ``step``; returns the pre-clip gradient norm.
        The gradients are the same on every rank, and so are the weights and the EMA afterwards."""
        cfg = self.config
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)  # skipped (fp16 only) when a gradient overflowed; the scale then shrinks
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return grad_norm

    @torch.no_grad()
    def _update_ema(self):
        ema_step(self.ema, self.model, ema_decay_at(self.step, self.config.ema_decay))
        self._update_extra_emas()

    # -- more EMAs: several decays, post-hoc EMA (training/ema.py) -------------------------------------
    def _init_extra_emas(self) -> None:
        """The EMAs of the decays after the first, and the power-function EMAs of post-hoc EMA when snapshots are
        asked for (None: not tracked)."""
        cfg = self.config
        self.extra_emas = ExtraEMAs(self.model, cfg.extra_ema_decays) if cfg.extra_ema_decays else None
        self.power_ema = PowerEMA(self.model) if cfg.ema_snapshot_every else None

    def _update_extra_emas(self) -> None:
        if self.extra_emas is not None:
            self.extra_emas.update(self.model, self.step)
        if self.power_ema is not None:
            self.power_ema.update(self.model, self.step + 1)  # t counts the optimiser steps taken, this one too

    def _extra_ema_weights(self) -> dict:
        out = {} if self.extra_emas is None else self.extra_emas.state_dicts()
        if self.power_ema is not None:
            out[POWER_EMA_FILE] = self.power_ema.state_dict()
        return out

    def _write_ema_snapshot(self) -> None:
        every = self.config.ema_snapshot_every
        if self.power_ema is not None and self.world.is_main and self._due(every):
            self.power_ema.write_snapshot(self.run_dir, self.step)

def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def train(config: TrainConfig, resume: bool = False, evaluator: Evaluator | None = None) -> Path:
    """Train (or resume, when ``resume`` and the run folder holds a checkpoint) and return the run folder.

    ``evaluator``: what measures quality every ``config.eval_every`` steps (:mod:`.quality`; the CLI builds it from
    :mod:`ddpm.evaluation.tracking`).  Under torchrun this also starts and, at the end, destroys the process group.
    If this rank fails, it says so on stderr (which rank, and that the last checkpoint is intact); a failed exchange
    with another rank (it crashed or timed out) is raised as :class:`~ddpm.runtime.distributed.DistributedError`."""
    world = distributed.setup(config.device)
    try:
        return Trainer(config, resume=resume, world=world, evaluator=evaluator).run()
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
