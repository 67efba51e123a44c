"""Saving and loading runs safely.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXX/`` holding

* ``model.safetensors`` and ``ema.safetensors``: the network's weights and their EMA;
* ``trainer.pt``: optimizer state, step, RNG states and the data order, saved with ``torch.save`` but
  holding only tensors, numbers, strings and containers, and always read back with
  ``torch.load(weights_only=True)``, so loading never runs code from the file;
* ``config.json``: the full run config.

Saves are atomic: the folder is written under a temporary name and renamed into place, and the
``latest`` pointer file is replaced atomically afterwards, so an interrupted save leaves the previous
checkpoint valid.  Only the newest ``keep`` checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import default_mode

__all__ = ["CheckpointError", "save_checkpoint", "latest_checkpoint", "load_checkpoint",
           "load_weights", "state_dict_for_saving"]


class CheckpointError(Exception):
    """A checkpoint or run folder that cannot be used; the message is one line that says why."""


def state_dict_for_saving(module: torch.nn.Module) -> dict:
    """A module's state dict with contiguous CPU tensors and without the ``_orig_mod.`` / ``module.`` prefixes
    that torch.compile and DistributedDataParallel add, so checkpoints load into a plain module."""
    out = {}
    for k, v in module.state_dict().items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v.detach().to("cpu").contiguous()
    return out


def save_checkpoint(run_dir: Path, step: int, *, model: torch.nn.Module, ema: torch.nn.Module,
                    trainer_state: dict, config: dict, keep: int = 3) -> Path:
    """Write checkpoint ``step`` atomically under ``run_dir/checkpoints`` and prune all but the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp_step_{step:07d}_"))
    os.chmod(tmp, default_mode(directory=True))  # mkdtemp's folders are private (0700)
    try:
        save_file(state_dict_for_saving(model), str(tmp / "model.safetensors"))
        save_file(state_dict_for_saving(ema), str(tmp / "ema.safetensors"))
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer_tmp = ckpt_root / ".latest.tmp"
    pointer_tmp.write_text(final.name + "\n")
    os.replace(pointer_tmp, ckpt_root / "latest")
    existing = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(path: Path) -> Path:
    """Resolve a run folder, its ``checkpoints`` folder, or a checkpoint folder to one checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint folder")
    if (path / "model.safetensors").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "model.safetensors").is_file():
            return candidate
    steps = sorted(p for p in root.glob("step_*") if (p / "model.safetensors").is_file())
    if not steps:
        raise CheckpointError(f"{path}: holds no checkpoint (expected checkpoints/step_*/model.safetensors); "
                              "train first or point at a run folder")
    return steps[-1]


def load_weights(ckpt: Path, which: str = "ema") -> dict:
    """Read ``model`` or ``ema`` weights of a checkpoint folder as a dict of tensors (safetensors: no code runs)."""
    f = Path(ckpt) / f"{which}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
    try:
        return load_file(str(f))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {e}); the file is corrupt") from None


def load_checkpoint(path: Path, *, with_trainer_state: bool = True) -> dict:
    """Load a checkpoint: ``{"path", "config", "model", "ema", "trainer"}`` (trainer only when asked).

    ``trainer.pt`` is read with ``torch.load(weights_only=True)``, which refuses pickled code.
    """
    ckpt = latest_checkpoint(path)
    cfg_file = ckpt / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable config ({e})") from None
    out = {"path": ckpt, "config": config, "model": load_weights(ckpt, "model"), "ema": load_weights(ckpt, "ema")}
    if with_trainer_state:
        f = ckpt / "trainer.pt"
        try:
            out["trainer"] = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{f}: unreadable trainer state ({type(e).__name__}); the file is corrupt "
                                  "or not a ddpm checkpoint") from None
    return out
