"""The training loop (Algorithm 1 of Ho et al. 2020): optimiser, EMA, checkpoints, logging.

No argument parsing here: :func:`train` takes a :class:`~ddpm.config.TrainConfig`.

Per step: x_0 from the data, t ~ Uniform{1..T} (0-based in code), eps ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), and a gradient step on
||eps - eps_theta(x_t, t)||^2 (eq. 14), or on L_vlb / L_hybrid when the config asks.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path

import torch

from . import data as data_mod
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_json_atomic
from .config import TrainConfig
from .diffusion import loss_simple, q_sample, sample_timesteps
from .schedule import make_schedule
from .unet import UNet

__all__ = ["train", "Trainer", "resolve_device", "ema_decay_at", "lr_at", "read_metrics"]


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def ema_decay_at(step: int, max_decay: float) -> float:
    """EMA decay with warm-up, min(max_decay, (1 + n) / (10 + n)), so short runs still get a useful average."""
    return min(max_decay, (1 + step) / (10 + step))


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant (the paper's CIFAR-10 recipe)."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


class Trainer:
    """Holds a run's live state: model, EMA, optimizer, data order and RNGs.  ``run()`` trains to ``config.steps``."""

    def __init__(self, config: TrainConfig, resume: bool = False):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        self.schedule = make_schedule(config.schedule)
        # refuse bad input before any work: data, image size vs the U-Net's downsampling
        data_mod.check_image_size(config.data.image_size, config.model.size_divisor)
        images = data_mod.load_images(config.data)
        self.num_images = len(images)
        if self.num_images < config.batch_size:
            raise data_mod.DataError(f"{config.data.source}: {self.num_images} images, fewer than the batch size "
                                     f"{config.batch_size}; lower --batch-size")

        torch.manual_seed(config.seed)  # model init and dropout
        self.model = UNet(config.model).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.use_bf16 = self._autocast_dtype() is not None
        if self._want("channels_last"):
            self.model = self.model.to(memory_format=torch.channels_last)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           **({"fused": True} if fused else {}))
        self.batches = data_mod.Batches(images, batch_size=config.batch_size, seed=config.seed,
                                        hflip=config.data.hflip, device=self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(config.seed + 1)
        self.step = 0
        self.forward = torch.compile(self.model) if self._want("compile") else self.model
        self.vlb = None
        if config.loss != "simple":
            from .likelihood import TrainingVLB
            self.vlb = TrainingVLB(self.schedule, config.loss, config.variance, config.hybrid_lambda,
                                   config.importance_sampling)
        if resume:
            self._restore()

    # -- hardware choices -------------------------------------------------------------------------
    def _want(self, flag: str) -> bool:
        value = getattr(self.config, flag)
        if value == "auto":
            return self.device.type == "cuda"
        return value in (True, "on", "true", "yes")

    def _autocast_dtype(self):
        p = self.config.precision
        if p == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]

    def _autocast(self):
        dtype = self._autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # -- state -------------------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "data": self.batches.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.vlb is not None:
            state["vlb"] = self.vlb.state_dict()
        return state

    def _restore(self):
        ck = load_checkpoint(self.run_dir)
        saved = ck["config"]
        for key in ("model", "schedule", "variance", "loss"):
            if json.dumps(saved.get(key), sort_keys=True) != json.dumps(self.config.to_dict()[key], sort_keys=True):
                raise CheckpointError(f"{ck['path']}: saved {key} config differs from the requested one; "
                                      "resume with the run's own config.json")
        try:
            self.model.load_state_dict(ck["model"])
            self.ema.load_state_dict(ck["ema"])
        except RuntimeError as e:
            raise CheckpointError(f"{ck['path']}: weights do not fit this model ({str(e).splitlines()[0]})") from None
        tr = ck["trainer"]
        self.optimizer.load_state_dict(tr["optimizer"])
        self.batches.load_state_dict(tr["data"])
        self.gen.set_state(tr["generator"])
        torch.set_rng_state(tr["torch_rng"])
        if "cuda_rng" in tr and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tr["cuda_rng"])
        if self.vlb is not None and "vlb" in tr:
            self.vlb.load_state_dict(tr["vlb"])
        self.step = int(tr["step"])
        self._truncate_metrics()

    def _truncate_metrics(self):
        """Drop metric rows logged after the restored checkpoint, so the log reads as one uninterrupted run."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            rows = [r for r in read_metrics(path) if r["step"] <= self.step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            tmp.replace(path)

    def save(self):
        save_checkpoint(self.run_dir, self.step, model=self.model, ema=self.ema, trainer_state=self.trainer_state(),
                        config=self.config.to_dict(), keep=self.config.keep_checkpoints)

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
            out = self.forward(x_t, t)
        if self.vlb is None:
            return loss_simple(out, noise, self.config.variance)
        return self.vlb.loss(out.float(), noise, x0, x_t, t, weights)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg.lr, cfg.warmup_steps)
        self.model.train()
        total = torch.zeros((), device=self.device)
        for _ in range(cfg.grad_accum):
            loss = self._loss(next(self.batches)) / cfg.grad_accum
            loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return total, grad_norm

    @torch.no_grad()
    def _update_ema(self):
        decay = ema_decay_at(self.step, self.config.ema_decay)
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in self.model.parameters()], 1.0 - decay)
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Path:
        from .report import plot_loss_curve, write_preview

        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "config.json", cfg.to_dict())
        metrics = (self.run_dir / "metrics.jsonl").open("a")
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        loss_sum = torch.zeros((), device=self.device)
        n_logged, t_last, img_last = 0, time.perf_counter(), 0
        try:
            while self.step < cfg.steps:
                loss, grad_norm = self.train_step()
                loss_sum += loss
                n_logged += 1
                img_last += cfg.batch_size * cfg.grad_accum
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    mean_loss = (loss_sum / n_logged).item()  # the one host sync per log interval
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"loss became {mean_loss} at step {self.step}; lower --lr")
                    row = {"step": self.step, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
                           "grad_norm": float(grad_norm), "img_per_s": img_last / max(now - t_last, 1e-9),
                           "time": time.time()}
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{row['img_per_s']:.0f}")
                    loss_sum.zero_()
                    n_logged, t_last, img_last = 0, time.perf_counter(), 0
                if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
                    write_preview(self)
                    plot_loss_curve(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "loss.png")
                    t_last = time.perf_counter()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                    t_last = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()
            metrics.close()
        return self.run_dir


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train (or resume, when ``resume`` and the run folder holds a checkpoint) and return the run folder."""
    return Trainer(config, resume=resume).run()
