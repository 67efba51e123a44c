"""The EMAs a run keeps beside its main one: more decays at once, and post-hoc EMA (Karras et al. 2024, EDM2,
Sec. 3 and App. C; the maths is :mod:`ddpm.core.ema`).

* Several decays: ``--ema-decay 0.999,0.9999`` tracks one classic EMA per decay, each with the trainer's warm-up
  (:func:`~ddpm.training.rates.ema_decay_at`); the first is the run's ``ema.safetensors``, the others are saved in
  every checkpoint as ``ema_D.safetensors`` and chosen with ``--weights ema:D``.
* Post-hoc EMA: ``--ema-snapshot-every N`` tracks two power-function EMAs (:data:`TRACKED_SIGMA_RELS`), keeps them in
  every checkpoint (``power_ema.safetensors``: a resumed run continues them exactly), and every N steps (and at the
  last) writes a snapshot of both, float32, to ``RUN/ema_snapshots/step_XXXXXXX.safetensors`` (bytes = parameters x
  2 x 4, docs/ema.md).  :func:`reconstruct` combines the snapshots into the EMA of any length sigma_rel, and
  :func:`write_ema_checkpoint` writes it as a checkpoint folder every command reads.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.ema import gamma_from_sigma_rel, posthoc_coefficients, power_ema_beta
from ..runs.checkpoint import (
    CheckpointError,
    ema_weights_name,
    latest_checkpoint,
    load_weights,
    state_dict_for_saving,
)
from ..runtime.atomic import atomic_write_path, default_mode, fsync_path
from .rates import ema_decay_at

__all__ = ["TRACKED_SIGMA_RELS", "SNAPSHOT_DIR", "POWER_EMA_FILE", "ema_step", "ExtraEMAs", "PowerEMA",
           "restore_extra_emas",
           "snapshots", "reconstruct", "write_ema_checkpoint", "default_ema_dir"]

#: the two power-function EMA lengths tracked for post-hoc EMA, EDM2's (Sec. 3.2, App. C.3)
TRACKED_SIGMA_RELS = (0.05, 0.10)
#: the run-folder subfolder of the snapshots
SNAPSHOT_DIR = "ema_snapshots"
#: the checkpoint file (without ``.safetensors``) of the tracked power-function EMAs
POWER_EMA_FILE = "power_ema"


def _key(sigma_rel: float, name: str) -> str:
    return f"{sigma_rel:g}/{name}"


@torch.no_grad()
def ema_step(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One EMA update of ``ema`` towards ``model``: theta^ <- decay theta^ + (1 - decay) theta for the parameters,
    the buffers copied (the trainer's EMA, the extra decays and the power-function EMAs all step this way)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        eb.copy_(b)


class ExtraEMAs:
    """Classic EMAs of the decays after the first (the trainer's own ``ema`` is the first), updated as it is."""

    def __init__(self, model: torch.nn.Module, decays):
        self.decays = tuple(decays)
        self.modules = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.decays]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """theta^ <- d theta^ + (1 - d) theta with d = ema_decay_at(step, decay), as the trainer's EMA."""
        for decay, ema in zip(self.decays, self.modules):
            ema_step(ema, model, ema_decay_at(step, decay))

    def state_dicts(self) -> dict:
        """NAME -> weights, for :func:`~ddpm.runs.checkpoint.save_checkpoint`'s ``extra_weights``."""
        return {ema_weights_name(d): state_dict_for_saving(m) for d, m in zip(self.decays, self.modules)}

    def load(self, ckpt: Path) -> None:
        for decay, ema in zip(self.decays, self.modules):
            ema.load_state_dict(load_weights(ckpt, ema_weights_name(decay)))


class PowerEMA:
    """Power-function EMAs of the lengths ``sigma_rels`` (EDM2 eq. 3): theta^_t = beta_t theta^_(t-1) +
    (1 - beta_t) theta_t, beta_t = (1 - 1/t)^(gamma + 1), t the number of optimiser steps taken."""

    def __init__(self, model: torch.nn.Module, sigma_rels=TRACKED_SIGMA_RELS):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(gamma_from_sigma_rel(s) for s in self.sigma_rels)
        self.modules = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, t: int) -> None:
        """Fold in the weights after optimiser step ``t`` (1-based); at t = 1 each EMA becomes theta_1."""
        for gamma, ema in zip(self.gammas, self.modules):
            ema_step(ema, model, power_ema_beta(t, gamma))

    def state_dict(self) -> dict:
        """Every tracked EMA's weights in one flat dict, keys ``SIGMA_REL/NAME``."""
        return {_key(s, k): v for s, m in zip(self.sigma_rels, self.modules)
                for k, v in state_dict_for_saving(m).items()}

    def load_state_dict(self, state: dict) -> None:
        for s, m in zip(self.sigma_rels, self.modules):
            prefix = _key(s, "")
            m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def load(self, ckpt: Path) -> None:
        self.load_state_dict(load_weights(ckpt, POWER_EMA_FILE))

    def write_snapshot(self, run_dir: Path, step: int) -> Path:
        """Write the tracked EMAs at ``step`` atomically to ``RUN/ema_snapshots/step_XXXXXXX.safetensors``, with
        the step, the lengths and the gammas in its metadata."""
        path = Path(run_dir) / SNAPSHOT_DIR / f"step_{step:07d}.safetensors"
        meta = {"step": str(step), "sigma_rels": json.dumps(self.sigma_rels), "gammas": json.dumps(self.gammas)}
        with atomic_write_path(path) as tmp:
            save_file(self.state_dict(), str(tmp), metadata=meta)
        return path

    @staticmethod
    def drop_snapshots_after(run_dir: Path, step: int, every: int) -> None:
        """On resume at ``step``: remove the snapshots written after it (the run writes them again), and the one of
        the earlier run's last step when that is not a multiple of ``every``, so that the resumed run holds the
        uninterrupted one's snapshots."""
        for p in snapshots(run_dir):
            if p["step"] > step or (p["step"] == step and step % every):
                p["path"].unlink(missing_ok=True)


def restore_extra_emas(trainer, ck: dict) -> None:
    """On resume: the extra decays' EMAs and the power-function EMAs from checkpoint ``ck`` (a resumed run goes on
    as the uninterrupted one), and, when it trains on, the snapshots of :meth:`PowerEMA.drop_snapshots_after`
    dropped (rank 0)."""
    if trainer.extra_emas is not None:
        trainer.extra_emas.load(ck["path"])
    if trainer.power_ema is not None:
        trainer.power_ema.load(ck["path"])
        step = ck.get("trainer", {}).get("step")
        if trainer.world.is_main and step is not None and int(step) < trainer.config.steps:
            PowerEMA.drop_snapshots_after(trainer.run_dir, int(step), trainer.config.ema_snapshot_every)


def snapshots(run_dir) -> list[dict]:
    """The run's snapshots, oldest first: ``{"path", "step", "sigma_rels", "gammas"}`` each."""
    found = []
    for path in sorted((Path(run_dir) / SNAPSHOT_DIR).glob("step_*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            found.append({"path": path, "step": int(meta["step"]), "sigma_rels": json.loads(meta["sigma_rels"]),
                          "gammas": json.loads(meta["gammas"])})
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise CheckpointError(f"{path}: unreadable snapshot ({type(e).__name__}: {e}); remove it") from None
    return sorted(found, key=lambda s: s["step"])


def reconstruct(run_dir, sigma_rel: float) -> tuple[dict, dict]:
    """(weights, record): the power-function EMA of length ``sigma_rel`` at the run's last snapshot, as the
    least-squares combination of every snapshot of both tracked profiles (EDM2 App. C.3), summed in float64.
    The record holds the steps, profiles and coefficients used."""
    found = snapshots(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: holds no EMA snapshots ({SNAPSHOT_DIR}/); train with "
                              f"--ema-snapshot-every N to use post-hoc EMA")
    gamma = gamma_from_sigma_rel(sigma_rel)
    terms = [(s, sr, g) for s in found for sr, g in zip(s["sigma_rels"], s["gammas"])]
    step = found[-1]["step"]
    x = posthoc_coefficients([s["step"] for s, _, _ in terms], [g for _, _, g in terms], step, gamma)
    total: dict = {}
    for (snap, sr, _), coef in zip(terms, x):
        state = load_weights(snap["path"].parent, snap["path"].stem)
        prefix = _key(sr, "")
        for k, v in state.items():
            if k.startswith(prefix):
                name = k[len(prefix):]
                total[name] = total.get(name, 0) + float(coef) * v.double()
    weights = {k: v.float().contiguous() for k, v in total.items()}
    record = {"sigma_rel": sigma_rel, "gamma": gamma, "step": step, "snapshots": len(found),
              "terms": [{"step": s["step"], "sigma_rel": sr, "coefficient": float(c)}
                        for (s, sr, _), c in zip(terms, x)]}
    return weights, record


def default_ema_dir(run_dir, sigma_rel: float) -> Path:
    """Where ``ddpm ema RUN --sigma-rel S`` writes by default: ``RUN/ema/sigma_rel_0.080``."""
    return Path(run_dir) / "ema" / f"sigma_rel_{sigma_rel:.3f}"


def write_ema_checkpoint(run_dir, sigma_rel: float, out=None) -> Path:
    """Reconstruct the EMA of length ``sigma_rel`` (:func:`reconstruct`) and write it, atomically, as a checkpoint
    folder (``ema.safetensors`` the reconstruction, ``model.safetensors`` and ``config.json`` those of the run's
    latest checkpoint, ``ema.json`` how it was made) that ``ddpm sample FOLDER`` and every command read."""
    ckpt = latest_checkpoint(run_dir)
    out = Path(out) if out is not None else default_ema_dir(run_dir, sigma_rel)
    if out.exists() and not (out / "ema.json").is_file():
        raise CheckpointError(f"{out}: exists and is not a folder ddpm ema wrote; pick another --out")
    weights, record = reconstruct(run_dir, sigma_rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp_{out.name}_"))
    os.chmod(tmp, default_mode(directory=True))
    try:
        save_file(weights, str(tmp / "ema.safetensors"))
        shutil.copyfile(ckpt / "model.safetensors", tmp / "model.safetensors")
        shutil.copyfile(ckpt / "config.json", tmp / "config.json")
        (tmp / "ema.json").write_text(json.dumps({**record, "model_from": ckpt.name}, indent=2) + "\n")
        for f in tmp.iterdir():
            fsync_path(f)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
