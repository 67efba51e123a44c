"""Saving and loading runs safely.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXX/`` holding

* ``model.safetensors`` and ``ema.safetensors``: the network's weights and their EMA;
* ``trainer.pt``: optimizer state, step, RNG states and the data order, saved with ``torch.save`` but
  holding only tensors, numbers, strings and containers, and always read back with
  ``torch.load(weights_only=True)``, so loading never runs code from the file;
* ``config.json``: the full run config;
* optionally, more weights: ``ema_D.safetensors``, the EMA of decay D of a run trained with several decays (the first
  decay's is ``ema.safetensors``), and ``power_ema.safetensors``, the power-function EMAs of post-hoc EMA
  (:mod:`ddpm.training.ema`).
* ``analytic.json`` (optional, written after the folder: a checkpoint without it loads as before): the Monte Carlo
  estimates of Gamma_t that Analytic-DPM's variance is made from (:mod:`ddpm.sampling.variance`), per weights set
  and way of calling the network, read and written by :func:`read_analytic` and :func:`write_analytic`.

Saves are atomic and durable: every file is written and flushed to disk (fsync) under a temporary folder name,
the folder is renamed into place and the rename flushed, and only then is the ``latest`` pointer replaced and
are checkpoints beyond the newest ``keep`` deleted.  An interrupted save, even by a power cut, leaves the
previous checkpoint valid.  The newest complete ``step_*`` folder is the latest checkpoint; resuming falls back
to an older one, with a warning, when the newest cannot be read.

Weights are checked both ways: a checkpoint whose weights hold a NaN or an infinity (a diverged run) is not written
(:class:`FloatingPointError`), and one read back with such weights (written by an older version, or damaged on disk)
is refused with one line naming the file and the first bad tensor, so that nothing samples black images or
evaluates a NaN bound from it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..runtime.atomic import default_mode, fsync_path, write_json_atomic

__all__ = ["WEIGHT_SETS", "CheckpointError", "save_checkpoint", "latest_checkpoint", "complete_checkpoints",
           "load_checkpoint", "load_weights", "state_dict_for_saving", "mismatch_summary", "non_finite", "check_finite",
           "CHECKPOINT_FILES", "ema_decays", "ema_weights_name", "weight_set", "is_weight_set", "ANALYTIC_FILE",
           "analytic_record", "check_analytic", "read_analytic", "write_analytic",
           "POINTERS", "mark_best", "resolve_checkpoint"]


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


def non_finite(state: dict) -> str | None:
    """What is wrong with the first floating-point tensor of ``state`` (in its order) that holds a NaN or an
    infinity, as ``"NAME holds NaN (3 of 864 values)"``; None when every value is finite."""
    for name, v in state.items():
        if not (isinstance(v, torch.Tensor) and v.is_floating_point()) or bool(torch.isfinite(v).all()):
            continue
        nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        what = " and ".join(w for w, n in (("NaN", nan), ("Inf", inf)) if n)
        return f"{name} holds {what} ({nan + inf} of {v.numel()} values)"
    return None


def check_finite(state: dict, where) -> dict:
    """``state``, or a :class:`CheckpointError` naming ``where`` (the file) and the first tensor with a NaN or Inf."""
    bad = non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{where}: {bad}; these weights come from a diverged run or a damaged file and "
                              "cannot be used")
    return state


def save_checkpoint(run_dir: Path, step: int, *, model: torch.nn.Module, ema: torch.nn.Module,
                    trainer_state: dict, config: dict, keep: int = 3, extra_weights: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically and durably under ``run_dir/checkpoints``, then prune all but the
    newest ``keep``.  ``extra_weights``: more state dicts, NAME -> tensors, each written as ``NAME.safetensors``.
    Weights holding a NaN or an infinity are not written: :class:`FloatingPointError` says which tensor, and the
    checkpoints before stay the newest."""
    weights = {"model": state_dict_for_saving(model), "ema": state_dict_for_saving(ema), **(extra_weights or {})}
    for which, state in weights.items():
        bad = non_finite(state)
        if bad is not None:
            raise FloatingPointError(f"step {step}: the {which} weights diverged ({bad}), so no checkpoint is written "
                                     "and the earlier ones stay intact; start again with a lower --lr")
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp_step_{step:07d}_"))
    os.chmod(tmp, default_mode(directory=True))  # mkdtemp's folders are private (0700)
    aside = None
    try:
        for name, state in weights.items():
            save_file(state, str(tmp / f"{name}.safetensors"))
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        if final.exists():  # the same step saved again: move the old one aside until the new one is in place
            aside = ckpt_root / f".old_{final.name}_{os.getpid()}"
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_path(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not final.exists():
            os.replace(aside, final)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    _write_pointer(ckpt_root, "latest", final.name)
    best = _pointer(ckpt_root, "best")
    for old in _step_folders(ckpt_root)[:-keep] if keep > 0 else []:
        if old.name != best:  # the best checkpoint is kept out of the rotation
            shutil.rmtree(old, ignore_errors=True)
    return final


#: the pointer files of ``RUN/checkpoints/``: each holds the name of one step folder
POINTERS = ("latest", "best")


def _write_pointer(ckpt_root: Path, name: str, target: str) -> None:
    tmp = ckpt_root / f".{name}.tmp"
    tmp.write_text(target + "\n")
    fsync_path(tmp)
    os.replace(tmp, ckpt_root / name)
    fsync_path(ckpt_root)


def _pointer(ckpt_root: Path, name: str) -> str | None:
    f = Path(ckpt_root) / name
    return f.read_text().strip() if f.is_file() else None


def mark_best(run_dir: Path, step: int, keep: int = 3) -> Path:
    """Point ``RUN/checkpoints/best`` at checkpoint ``step`` (written already), atomically.  The folder it names is
    never pruned by :func:`save_checkpoint`; the one it named before goes unless it is among the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    folder = ckpt_root / f"step_{step:07d}"
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder}: no checkpoint to mark as the best")
    before = _pointer(ckpt_root, "best")
    _write_pointer(ckpt_root, "best", folder.name)
    if before and before != folder.name and before not in {p.name for p in _step_folders(ckpt_root)[-keep:]}:
        shutil.rmtree(ckpt_root / before, ignore_errors=True)
    return folder


def resolve_checkpoint(run, which: str | None) -> Path:
    """The checkpoint folder ``which`` of the run folder ``run``: ``latest`` (or None: the newest complete one),
    ``best`` (what ``checkpoints/best`` names), or a step folder's name (``step_0002000``) or its step (``2000``)."""
    run = Path(run)
    if which in (None, "latest"):
        return latest_checkpoint(run)
    root = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    if which == "best":
        name = _pointer(root, "best")
        if name is None:
            raise CheckpointError(f"{run}: has no best checkpoint (checkpoints/best is written by ddpm train "
                                  "--eval-every); pass --checkpoint latest or a step")
    else:
        digits = which[5:] if which.startswith("step_") else which
        if not digits.isdigit():
            raise CheckpointError(f"--checkpoint {which}: expected latest, best, a step folder (step_0002000) or a "
                                  "step number")
        name = f"step_{int(digits):07d}"
    folder = root / name
    if not (folder / "model.safetensors").is_file():
        kept = ", ".join(p.name for p in reversed(_step_folders(root))) or "none"
        raise CheckpointError(f"{folder}: no such checkpoint (kept: {kept})")
    return folder


CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "trainer.pt", "config.json")


def _step_folders(root: Path) -> list[Path]:
    """The ``step_*`` folders under ``root``, oldest first by step number."""
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def complete_checkpoints(path: Path) -> list[Path]:
    """The complete checkpoint folders (every file of :data:`CHECKPOINT_FILES` present) of a run folder or its
    ``checkpoints`` folder, newest first."""
    path = Path(path)
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    return [p for p in reversed(_step_folders(root)) if all((p / f).is_file() for f in CHECKPOINT_FILES)]


def latest_checkpoint(path: Path) -> Path:
    """Resolve a run folder, its ``checkpoints`` folder, or a checkpoint folder to one checkpoint folder: the
    newest complete one (a save interrupted before its pointer moved still counts; the pointer is not needed)."""
    path = Path(path)
    if path.name in POINTERS and path.is_file() and path.parent.name == "checkpoints":  # RUN/checkpoints/best
        return resolve_checkpoint(path.parent, path.name)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint folder")
    if (path / "model.safetensors").is_file():
        return path
    found = complete_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: holds no checkpoint (expected checkpoints/step_*/model.safetensors); "
                              "train first or point at a run folder")
    return found[0]


def mismatch_summary(error: RuntimeError) -> str:
    """The first concrete line of a ``load_state_dict`` error (a missing key, an unexpected one, a shape that
    differs), not its "Error(s) in loading state_dict" header."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if not ln.startswith("Error(s) in loading")), lines[0] if lines else "")
    return detail if len(detail) <= 240 else detail[:237] + "..."


#: the two sets of weights a checkpoint holds: the EMA of the trained weights (what sampling uses by default), and
#: the trained weights themselves
WEIGHT_SETS = ("ema", "model")


def ema_decays(config: dict) -> tuple[float, ...]:
    """The EMA decays a run's saved ``config`` tracks, the first one's weights in ``ema.safetensors``."""
    return (float(config.get("ema_decay", 0.9999)), *map(float, config.get("extra_ema_decays", ())))


def ema_weights_name(decay: float) -> str:
    """The file name (without ``.safetensors``) of the weights of an extra EMA decay: ``ema_0.9999`` (the shortest
    text that reads back as the same float, so 0.9999999 and 1 get names of their own)."""
    return f"ema_{float(decay)!r}"


def weight_set(ck: dict, which: str) -> dict:
    """The weights ``which`` names of a checkpoint loaded by :func:`load_checkpoint`: "ema", "model", or "ema:D",
    the EMA of decay D of a run trained with several (``--ema-decay 0.999,0.9999``; the first is "ema")."""
    if which in WEIGHT_SETS:
        return ck[which]
    try:
        decay = float(which.split(":", 1)[1]) if which.startswith("ema:") else None
    except ValueError:
        decay = None
    if decay is None:
        raise ValueError(f"weights must be ema, model or ema:DECAY, got {which!r}")
    decays = ema_decays(ck["config"])
    match = [i for i, d in enumerate(decays) if abs(d - decay) <= 1e-12]
    if not match:
        raise CheckpointError(f"{ck['path']}: holds no EMA of decay {decay:g} (its decays: "
                              f"{', '.join(repr(d) for d in decays)}); pass --weights ema:D with one of them")
    return ck["ema"] if match[0] == 0 else load_weights(ck["path"], ema_weights_name(decay))


def load_weights(ckpt: Path, which: str = "ema") -> dict:
    """Read ``model`` or ``ema`` weights of a checkpoint folder as a dict of tensors (safetensors: no code runs);
    weights holding a NaN or an infinity are refused (:func:`check_finite`)."""
    f = Path(ckpt) / f"{which}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
    try:
        state = load_file(str(f))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {e}); the file is corrupt, remove "
                              f"{Path(ckpt).name} to use the checkpoint before it") from None
    return check_finite(state, f)


def load_checkpoint(path: Path, *, with_trainer_state: bool = True, fallback: bool = False) -> dict:
    """Load a checkpoint: ``{"path", "config", "model", "ema", "trainer"}`` (trainer only when asked).

    ``trainer.pt`` is read with ``torch.load(weights_only=True)``, which refuses pickled code.  With
    ``fallback`` (resuming), a run folder whose newest checkpoint cannot be read loads the newest one that can,
    with a warning naming the ones skipped; the error of the newest is raised if none can.
    """
    path = Path(path)
    candidates = complete_checkpoints(path) if fallback and path.is_dir() else []
    if len(candidates) < 2 or (path / "model.safetensors").is_file():
        return _load_one(latest_checkpoint(path), with_trainer_state)  # (with the usual error when there is none)
    skipped = []
    for ckpt in candidates:
        try:
            out = _load_one(ckpt, with_trainer_state)
        except CheckpointError as e:
            skipped.append(e)
            continue
        if skipped:
            warnings.warn(f"{'; '.join(map(str, skipped))}; using the older {ckpt} instead", stacklevel=2)
        return out
    raise skipped[0]


def _load_one(ckpt: Path, with_trainer_state: bool) -> dict:
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
        if not isinstance(out["trainer"], dict):
            raise CheckpointError(f"{f}: holds a {type(out['trainer']).__name__}, not a trainer state")
    return out


#: the file beside a checkpoint's weights that holds its Analytic-DPM estimates
ANALYTIC_FILE = "analytic.json"
_ANALYTIC_FORMAT = "ddpm-analytic-gamma/1"


def is_weight_set(name) -> bool:
    """Whether ``name`` names a checkpoint's weights: "ema", "model" or "ema:D" (the EMA of decay D)."""
    if name in WEIGHT_SETS:
        return True
    if not (isinstance(name, str) and name.startswith("ema:")):
        return False
    try:
        return 0 < float(name[4:]) < 1
    except ValueError:
        return False


def _check_estimate(e, where) -> dict:
    """One estimate of :func:`check_analytic` in its canonical form, or a one-line :class:`CheckpointError`."""
    def bad(why):
        return CheckpointError(f"{where}: {why}")
    if not isinstance(e, dict) or set(e) != {"weights", "guidance", "images", "seed", "gamma"}:
        raise bad("an estimate is not an object of weights, guidance, images, seed and gamma")
    g = e["guidance"]
    if g is not None and not (isinstance(g, dict) and set(g) == {"w", "interval"} and _number(g["w"])
                              and (g["interval"] is None or (isinstance(g["interval"], list)
                                                             and len(g["interval"]) == 2
                                                             and all(_index(i) for i in g["interval"])))):
        raise bad(f"guidance {g!r} is neither null nor {{w, interval}}")
    if not is_weight_set(e["weights"]) or not _index(e["images"]) or not _index(e["seed"]):
        raise bad("weights, images or seed out of range")
    gamma = e["gamma"]
    if not (isinstance(gamma, dict) and gamma and all(k.isdigit() and _number(v) and v >= 0
                                                      for k, v in gamma.items())):
        raise bad("gamma is not a map of timesteps to finite non-negative numbers")
    return {**e, "guidance": None if g is None else {"w": float(g["w"]), "interval": g["interval"]},
            "gamma": {str(int(k)): float(v) for k, v in gamma.items()}}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf")


def _index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def analytic_record(estimates: list[dict]) -> dict:
    """The object of an ``analytic.json`` holding ``estimates`` (as :func:`check_analytic` returns them)."""
    return {"format": _ANALYTIC_FORMAT, "estimates": list(estimates)}


def check_analytic(obj, where) -> list[dict]:
    """The estimates of an ``analytic.json`` object (also carried in an export's ``ddpm_config.json``): a list of
    ``{"weights": "ema" | "model", "guidance": None | {"w": w, "interval": [lo, hi] (0-based) | None}, "images": M,
    "seed": s, "gamma": {"t": Gamma_t}}`` (t 0-based); anything else is a one-line :class:`CheckpointError` naming
    ``where``."""
    if not (isinstance(obj, dict) and obj.get("format") == _ANALYTIC_FORMAT and isinstance(obj.get("estimates"), list)):
        raise CheckpointError(f"{where}: not a ddpm analytic-variance file (format {_ANALYTIC_FORMAT})")
    return [_check_estimate(e, where) for e in obj["estimates"]]


def read_analytic(ckpt: Path) -> list[dict]:
    """The estimates stored beside the weights of checkpoint folder ``ckpt`` (:func:`check_analytic`); [] when it
    holds none.  A damaged or truncated file is a one-line :class:`CheckpointError`, never read in part."""
    f = Path(ckpt) / ANALYTIC_FILE
    if not f.is_file():
        return []
    try:
        obj = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {e})") from None
    return check_analytic(obj, f)


def write_analytic(ckpt: Path, estimates: list[dict]) -> dict:
    """Write ``estimates`` (checked as :func:`check_analytic` reads them) as ``ckpt/analytic.json``, atomically;
    returns the object written."""
    obj = analytic_record(estimates)
    check_analytic(obj, Path(ckpt) / ANALYTIC_FILE)
    write_json_atomic(Path(ckpt) / ANALYTIC_FILE, obj)
    return obj
