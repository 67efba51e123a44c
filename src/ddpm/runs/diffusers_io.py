"""``ddpm import`` and ``ddpm export``: diffusers model folders in, diffusers pipeline folders out.

:func:`import_diffusers` reads a ``DDPMPipeline`` folder (or a bare ``UNet2DModel`` one, with the schedule given)
and writes a ddpm run folder, config.json and one checkpoint (``step_0000000``, the model and EMA weights both the
imported ones), that every ddpm command reads like a trained run.  Nothing is unpickled: ``.safetensors`` weights
are read with safetensors, ``.bin`` ones with ``torch.load(weights_only=True)``, which refuses anything but
tensors and plain containers; weights holding a NaN or an infinity are refused too.

:func:`export_diffusers` writes a run's weights as a folder that ``diffusers.DDPMPipeline.from_pretrained`` loads:
the network as a UNet2DModel (safetensors), the betas, variance type and x_0 clipping as a DDPMScheduler, the
run's own config as ``ddpm_config.json`` (so that importing the folder again gives the same run config back), with
the checkpoint's stored estimate of Analytic-DPM's variance for those weights under ``analytic`` (so that the
imported run draws the same images with the defaults, without the training data), and a model card, README.md,
with the training settings and the bound and sample quality measured on the run.

What is kept: everything the sampler uses.  The linear and cosine schedules, the fixed variances and the
learned-range one (DDPMScheduler's learned_range is eq. 15 of Nichol & Dhariwal 2021, as in ddpm) all have
diffusers counterparts.  A network UNet2DModel cannot hold (channel_mult not starting at 1, a GroupNorm whose
group count ddpm lowered to divide its width, attention heads of several widths) is refused with one line
naming the setting, not exported approximately.  diffusers computes no bound, so ddpm's choice of beta~_2 as the
decoder variance of the fixed-large bound has nothing to go into; Algorithm 2 adds no noise at t = 1 either way.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.schedule import ScheduleConfig, make_schedule
from ..data.datasets import DataConfig
from ..model.unet import UNet, count_parameters
from ..runtime.atomic import default_mode, fsync_path, write_json_atomic
from .checkpoint import (
    WEIGHT_SETS,
    CheckpointError,
    analytic_record,
    check_analytic,
    check_finite,
    load_checkpoint,
    read_analytic,
    save_checkpoint,
    weight_set,
    write_analytic,
)
from .config import TrainConfig
from .diffusers_format import (
    DIFFUSERS_VERSION,
    diffusers_scheduler_config,
    diffusers_unet_config,
    same_network,
    schedule_from_diffusers,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)

__all__ = ["WEIGHT_FILES", "UNKNOWN_DATA", "DiffusersFolder", "find_diffusers_folder", "read_diffusers",
           "import_diffusers", "export_diffusers", "check_new_folder", "model_card"]

#: the weight files of a UNet2DModel folder, in the order they are looked for
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
#: what config.json says of the data an imported network was trained on (the diffusers files do not say)
UNKNOWN_DATA = "unknown"


class DiffusersFolder:
    """Where the parts of a diffusers model folder are: ``unet`` (the UNet2DModel folder), ``scheduler`` (its
    scheduler_config.json, or None for a bare UNet2DModel folder) and ``ddpm_config`` (the ddpm_config.json that
    ``ddpm export`` writes, or None)."""

    def __init__(self, root: Path, unet: Path, scheduler: Path | None, ddpm_config: Path | None):
        self.root, self.unet, self.scheduler, self.ddpm_config = root, unet, scheduler, ddpm_config


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"{path}: holds a {type(out).__name__}, not a JSON object")
    return out


def find_diffusers_folder(src) -> DiffusersFolder:
    """The parts of the diffusers folder ``src``: a pipeline folder (model_index.json, unet/, scheduler/) or a bare
    UNet2DModel folder (config.json and weights); a one-line :class:`CheckpointError` for anything else."""
    root = Path(src)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such folder; download a diffusers model folder first "
                              "(see docs/pretrained.md)")
    extra = root / "ddpm_config.json"
    extra = extra if extra.is_file() else None
    index = root / "model_index.json"
    if index.is_file():
        parts = _read_json(index)
        unet_entry = parts.get("unet")
        if not (isinstance(unet_entry, list) and len(unet_entry) == 2):
            raise CheckpointError(f"{index}: names no unet; ddpm reads pipelines of one UNet2DModel and a scheduler")
        if unet_entry[1] != "UNet2DModel":
            raise CheckpointError(f"{index}: its unet is a {unet_entry[1]}, not a UNet2DModel; ddpm reads the "
                                  "unconditional DDPM network only")
        sched = root / "scheduler" / "scheduler_config.json"
        if parts.get("scheduler") and not sched.is_file():
            raise CheckpointError(f"{sched}: missing, though model_index.json names a scheduler; the folder is "
                                  "incomplete")
        return DiffusersFolder(root, root / "unet", sched if sched.is_file() else None, extra)
    if (root / "config.json").is_file():
        return DiffusersFolder(root, root, None, extra)
    if (root / "unet" / "config.json").is_file():
        return DiffusersFolder(root, root / "unet", None, extra)
    raise CheckpointError(f"{root}: not a diffusers model folder (no model_index.json, nor a UNet2DModel's "
                          "config.json); point at the folder that holds them")


def _read_weights(unet_dir: Path) -> tuple[dict, Path]:
    """The UNet2DModel weights of ``unet_dir`` as a dict of tensors, and the file read.  A .bin file is read with
    ``torch.load(weights_only=True)``: one that holds pickled code (or any object but tensors and containers) is
    refused before anything in it runs."""
    if any((unet_dir / f"{name}.index.json").is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{unet_dir}: the weights are split into several files (an .index.json); ddpm reads "
                              "one weights file")
    found = next((unet_dir / name for name in WEIGHT_FILES if (unet_dir / name).is_file()), None)
    if found is None:
        raise CheckpointError(f"{unet_dir}: no weights ({WEIGHT_FILES[0]} or {WEIGHT_FILES[1]}); the folder is "
                              "incomplete")
    if found.suffix == ".safetensors":
        try:
            state = load_file(str(found))
        except Exception as e:  # safetensors raises several types for damaged files
            raise CheckpointError(f"{found}: unreadable ({type(e).__name__}: {e}); the file is damaged") from None
    else:
        try:
            state = torch.load(found, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise CheckpointError(f"{found}: refused: it holds pickled objects other than tensors, which could run "
                                  f"code when loaded ({first}); ddpm reads .bin weights with "
                                  "torch.load(weights_only=True) only") from None
        except Exception as e:
            raise CheckpointError(f"{found}: unreadable ({type(e).__name__}: {e}); the file is damaged or not a "
                                  "torch.save file") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{found}: not a dict of named tensors; not a UNet2DModel's weights")
    return check_finite(state, found), found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_diffusers(src, *, schedule: ScheduleConfig | None = None, variance: str | None = None,
                   image_size: int | None = None) -> tuple[TrainConfig, dict, dict]:
    """(run config, ddpm U-Net weights, record of what was read) of the diffusers folder ``src``.

    schedule: the betas of a bare UNet2DModel folder (default: ddpm's, the paper's linear 1e-4 to 0.02 over 1,000
    steps); a pipeline folder brings its own and refuses another.  variance: sigma_t^2 of Algorithm 2 and of the
    bound (default: the scheduler's variance_type, else ddpm's fixed-large).  image_size: the side the network was
    trained at, for a config.json without sample_size.  Weights stored in float16 are widened to float32 (exactly).
    A ddpm_config.json beside the files (``ddpm export`` writes one) gives the rest of the run's config back when it
    describes the same network, schedule and variance.  Every problem is one :class:`CheckpointError` line."""
    folder = find_diffusers_folder(src)
    unet_json_path = folder.unet / "config.json"
    if not unet_json_path.is_file():
        raise CheckpointError(f"{unet_json_path}: missing; the folder is incomplete")
    unet_json = _read_json(unet_json_path)
    known, analytic, carried = None, None, None
    if folder.ddpm_config is not None:
        try:
            saved = _read_json(folder.ddpm_config)
            analytic = saved.pop("analytic", None)
            known = TrainConfig.from_dict(saved)
        except (TypeError, ValueError) as e:
            warnings.warn(f"{folder.ddpm_config}: not a ddpm config ({e}); ignored")
    model = unet_config_from_diffusers(unet_json, unet_json_path, image_size,
                                       num_classes=known.model.num_classes if known else None)
    notes = []
    if folder.scheduler is not None:
        if schedule is not None:
            raise CheckpointError(f"{folder.scheduler}: the folder brings its own schedule; drop the schedule flags")
        schedule, sched_variance, notes = schedule_from_diffusers(_read_json(folder.scheduler), folder.scheduler,
                                                                  known.schedule if known else None)
    else:
        schedule = schedule or ScheduleConfig()
        sched_variance = None
    chosen, variance = variance, variance or sched_variance or "fixed-large"
    if model.in_channels not in (1, 3):
        raise CheckpointError(f"{unet_json_path}: in_channels = {model.in_channels}; ddpm's runs hold grey (1) or RGB "
                              "(3) images")
    learned = model.output_channels == 2 * model.in_channels
    if learned and variance != "learned-range":
        raise CheckpointError(f"{unet_json_path}: out_channels = {model.output_channels} predicts a variance beside "
                              f"eps, which needs the learned-range variance, not {variance}")
    if not learned and variance == "learned-range":
        raise CheckpointError(f"{unet_json_path}: out_channels = {model.output_channels} predicts eps only; the "
                              "learned-range variance needs twice in_channels outputs: choose fixed-large or "
                              "fixed-small")
    diffusers_state, weights_file = _read_weights(folder.unet)
    state = state_dict_from_diffusers(diffusers_state, model, weights_file)
    data = DataConfig(source=UNKNOWN_DATA, image_size=model.image_size, channels=model.in_channels, split="all")
    config = TrainConfig(model=model, schedule=schedule, data=data, variance=variance,
                         loss="hybrid" if variance == "learned-range" else "simple")
    if known is not None:  # a ddpm export: its own config back, when it describes these files
        if same_network(known.model, model) and known.schedule == schedule and known.variance == (sched_variance
                                                                                                  or variance):
            config = replace(known, variance=variance) if chosen else known
            carried = _carried_estimates(analytic, folder.ddpm_config)
        else:
            warnings.warn(f"{folder.ddpm_config}: describes another network, schedule or variance than the diffusers "
                          "files beside it; ignored")
    record = {"source": str(folder.root.resolve()), "format": "diffusers", "weights_file": str(weights_file.resolve()),
              "weights_sha256": _sha256(weights_file), "diffusers_version": unet_json.get("_diffusers_version"),
              "scheduler": str(folder.scheduler.resolve()) if folder.scheduler else None, "notes": notes}
    if carried:
        record["analytic"] = carried  # (import_diffusers stores it beside the weights, not in config.json)
    return config, state, record


def _carried_estimates(analytic, where) -> list[dict] | None:
    """The analytic-variance estimates an export carried in ``ddpm_config.json`` (:func:`export_diffusers`), for
    the weights it holds; a damaged entry is left out with a warning (the imported run estimates where it can)."""
    if analytic is None:
        return None
    try:
        return check_analytic(analytic, f"{where} (analytic)")
    except CheckpointError as e:
        warnings.warn(f"{e}; the analytic-variance estimate is left out")
        return None


def check_new_folder(path, what: str = "folder") -> Path:
    """``path`` if it does not exist or is an empty folder, else a one-line :class:`CheckpointError`."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path}: already exists{' and is not empty' if path.is_dir() else ''}; pass a new "
                              f"{what}")
    return path


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final`` (an empty folder there is replaced) and flush the rename."""
    if final.is_dir():
        final.rmdir()  # empty: check_new_folder said so
    os.replace(tmp, final)
    fsync_path(final.parent)


def _staging(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    os.chmod(tmp, default_mode(directory=True))  # mkdtemp's folders are private (0700)
    return tmp


def import_diffusers(src, run_dir, **kw) -> Path:
    """Write the diffusers folder ``src`` as the ddpm run folder ``run_dir`` (new or empty) and return it; ``kw``
    as :func:`read_diffusers`.  The folder appears complete or not at all.  config.json records where the weights
    came from under ``imported`` (folder, file, SHA-256)."""
    run_dir = check_new_folder(run_dir, "run folder")
    config, state, record = read_diffusers(src, **kw)
    analytic = record.pop("analytic", None)
    for note in record["notes"]:
        warnings.warn(note)
    config = replace(config, run_dir=str(run_dir))
    net = UNet(config.model)
    net.load_state_dict(state)
    saved = {**config.to_dict(), "imported": record}
    tmp = _staging(run_dir)
    try:
        ckpt = save_checkpoint(tmp, 0, model=net, ema=net, trainer_state={"step": 0, "imported": True}, config=saved,
                               keep=1)
        if analytic:  # the exported weights are both weight sets here
            write_analytic(ckpt, [{**e, "weights": which} for which in WEIGHT_SETS for e in analytic])
        write_json_atomic(tmp / "config.json", saved)
        _move_into_place(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def export_diffusers(run, out, *, which: str = "ema") -> Path:
    """Write the ``which`` weights ("ema" or "model") of the run (or checkpoint) folder ``run`` as the diffusers
    pipeline folder ``out`` (new or empty), complete or not at all, and return it.  A network UNet2DModel cannot
    hold is a one-line :class:`CheckpointError` naming the setting."""
    if which not in WEIGHT_SETS and not which.startswith("ema:"):
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_SETS)} or ema:DECAY, got {which!r}")
    out = check_new_folder(out)
    ck = load_checkpoint(run, with_trainer_state=False)
    try:
        config = TrainConfig.from_dict(ck["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ck['path'] / 'config.json'}: not a valid ddpm config ({e})") from None
    try:
        unet_json = diffusers_unet_config(config.model)
    except ValueError as e:
        raise CheckpointError(f"{ck['path']}: cannot be written as a diffusers UNet2DModel: {e}") from None
    schedule = make_schedule(config.schedule)
    scheduler_json = diffusers_scheduler_config(config.schedule, config.variance, schedule.betas)
    weights = state_dict_to_diffusers(weight_set(ck, which))
    extra = _exported_estimates(ck["path"], which)
    tmp = _staging(out)
    try:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        write_json_atomic(tmp / "model_index.json", {
            "_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})
        write_json_atomic(tmp / "unet" / "config.json", unet_json)
        save_file(weights, str(tmp / "unet" / WEIGHT_FILES[0]), metadata={"format": "pt"})
        fsync_path(tmp / "unet" / WEIGHT_FILES[0])
        write_json_atomic(tmp / "scheduler" / "scheduler_config.json", scheduler_json)
        write_json_atomic(tmp / "ddpm_config.json", {**config.to_dict(), **extra})
        (tmp / "README.md").write_text(model_card(config, ck, which, out.name))
        fsync_path(tmp / "README.md")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _exported_estimates(ckpt: Path, which: str) -> dict:
    """``{"analytic": ...}``, the stored estimates of the ``which`` weights of ``ckpt`` as :func:`check_analytic`
    reads them back (without the weights set: the export holds one), or {} when there are none; a damaged
    store is left out with a warning."""
    try:
        estimates = [e for e in read_analytic(ckpt) if e["weights"] == which]
    except CheckpointError as e:
        warnings.warn(f"{e}; exported without the analytic-variance estimate")
        return {}
    if not estimates:
        return {}
    return {"analytic": analytic_record([{**e, "weights": "ema"} for e in estimates])}


def _measured(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def model_card(config: TrainConfig, ck: dict, which: str, name: str) -> str:
    """The README.md of an exported folder: how to load it, the training settings, the step, and the bound
    (``eval/nll.json``) and sample quality (``eval/quality.json``) measured on the run, when they are there."""
    run_root = Path(ck["path"]).parent.parent
    step = int(Path(ck["path"]).name[5:]) if Path(ck["path"]).name[5:].isdigit() else None
    imported = ck["config"].get("imported")
    m, s, d = config.model, config.schedule, config.data
    with torch.device("meta"):
        params = count_parameters(UNet(m))
    T = s.num_timesteps
    schedule = (f"linear betas from {s.beta_start:g} to {s.beta_end:g}" if s.kind == "linear"
                else f"cosine (Nichol & Dhariwal 2021, s = {s.cosine_s:g}, betas capped at {s.max_beta:g})")
    lines = ["---", "library_name: diffusers", "pipeline_tag: unconditional-image-generation",
             "tags:", "- ddpm", "- diffusion", "- unconditional-image-generation", "---", "",
             f"# {name}", "",
             f"A denoising diffusion probabilistic model (Ho, Jain & Abbeel 2020): a U-Net noise predictor "
             f"eps_theta(x_t, t) for {m.image_size}x{m.image_size} {'RGB' if m.in_channels == 3 else 'grey'} images "
             f"({params:,} parameters), with its noise schedule. Written by `ddpm export` "
             f"({'EMA' if which == 'ema' else 'raw'} weights{f' of training step {step:,}' if step else ''}).", "",
             "## Use", ""]
    if m.num_classes:  # DDPMPipeline passes no class labels: the network and the scheduler, by hand
        classes = ", ".join(d.class_names or [str(k) for k in range(m.num_classes)])
        lines += [f"Class-conditional: class k of ({classes}) is label k; label {m.num_classes} is \"no class\" (the "
                  "unconditional model of classifier-free guidance).", "", "```python", "import torch",
                  "from diffusers import DDPMScheduler, UNet2DModel", "",
                  f'unet = UNet2DModel.from_pretrained("{name}", subfolder="unet")',
                  f'scheduler = DDPMScheduler.from_pretrained("{name}", subfolder="scheduler")',
                  f"x, y = torch.randn(16, {m.in_channels}, {m.image_size}, {m.image_size}), torch.full((16,), 0)",
                  f"scheduler.set_timesteps({T})", "for t in scheduler.timesteps:  # Algorithm 2",
                  "    with torch.no_grad():", "        eps = unet(x, t, class_labels=y).sample",
                  "    x = scheduler.step(eps, t, x).prev_sample", "```", ""]
    else:
        lines += ["```python", "from diffusers import DDPMPipeline", "",
                  f'pipe = DDPMPipeline.from_pretrained("{name}")',
                  f"images = pipe(batch_size=16, num_inference_steps={T}).images  # Algorithm 2, all {T} steps",
                  "```", ""]
    lines += ["## Training", ""]
    if imported:
        lines += [f"Imported into ddpm from the diffusers folder {Path(str(imported.get('source'))).name}, which does "
                  "not record its training.", ""]
    rows = [("data", f"{d.source} ({d.split} split)" if d.source in ("digits", "sklearn-digits") else d.source),
            ("network", f"base width {m.base_channels}, channel multipliers {list(m.channel_mult)}, "
                        f"{m.num_res_blocks} residual block{'s' if m.num_res_blocks != 1 else ''} per level, "
                        f"attention at {list(m.attention_resolutions)} px, dropout {m.dropout:g}"),
            ("schedule", f"T = {T}, {schedule}"),
            ("variance", config.variance), ("objective", {"simple": "L_simple (eq. 14)", "vlb": "L_vlb",
                                                          "hybrid": "L_hybrid"}[config.loss])]
    if not imported:
        rows += [("optimisation", f"AdamW, lr {config.lr:g} ({config.lr_schedule} after {config.warmup_steps} "
                                  f"warm-up steps), batch {config.batch_size}, EMA decay {config.ema_decay:g}"),
                 ("steps", f"{step:,} of {config.steps:,}" if step is not None else f"{config.steps:,}")]
    lines += ["| setting | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows], ""]
    nll, quality = _measured(run_root / "eval" / "nll.json"), _measured(run_root / "eval" / "quality.json")
    lines += ["## Measured", ""]
    nll = nll if isinstance(nll, dict) and isinstance(nll.get("bpd"), (int, float)) else None
    quality = quality if isinstance(quality, dict) and isinstance(quality.get("fd"), (int, float)) else None
    if nll is None and quality is None:
        lines += ["Nothing measured yet (`ddpm eval nll` and `ddpm eval quality` write the numbers this card "
                  "shows).", ""]
    if nll is not None:
        how = "all T terms" if nll.get("mode") == "full" else f"a {nll.get('k')}-stratum estimate"
        lines += [f"- Variational bound (eq. 5): {nll['bpd']:.3f} +- {nll.get('bpd_stderr', float('nan')):.3f} "
                  f"bits/dim on {nll.get('num_images')} images ({how}, variance {nll.get('variance')}), "
                  "from `ddpm eval nll`."]
    if quality is not None:
        floor = (quality.get("floor") or {}).get("fd")
        lines += [f"- Classifier Frechet distance {quality['fd']:.3f} on {quality.get('n')} samples"
                  f"{f' (real digits: {floor:.3f})' if floor is not None else ''}, in the features of ddpm's small "
                  "digit classifier, not Inception's: comparable between digit models only; from `ddpm eval quality`."]
    lines += ["", "Paper: Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models, "
                  "https://arxiv.org/abs/2006.11239", ""]
    return "\n".join(lines)
