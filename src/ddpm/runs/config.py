"""The run configuration: one dataclass per component, nested in :class:`TrainConfig`, saved as JSON.

The CLI only maps flags onto these; the trainer, the sampler and the evaluators rebuild everything
they need from the JSON saved beside every checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..core.config_io import from_known_fields
from ..core.diffusion import VARIANCE_TYPES
from ..core.schedule import ScheduleConfig
from ..data.datasets import DataConfig
from ..model.unet import UNetConfig, preset
from ..runtime.precision import check_precision

__all__ = ["TrainConfig", "LOSS_TYPES", "LR_SCHEDULES", "PRESET_RECIPES"]

LOSS_TYPES = ("simple", "vlb", "hybrid")
LR_SCHEDULES = ("constant", "cosine")

#: training settings that go with a U-Net preset (``ddpm train --preset NAME`` and :meth:`TrainConfig.for_preset`);
#: a preset without an entry trains with TrainConfig's own defaults, the paper's
PRESET_RECIPES = {
    "digits": {"lr": 1e-3, "batch_size": 64, "steps": 3000, "lr_schedule": "cosine"},
    # under a third of the digits recipe's minutes (4.5 against 14.4 measured): 28x28, half the batch, Min-SNR-5;
    # with the digits' labels (--class-cond, what `make demo` trains) its samples beat the digits recipe's
    # (docs/performance.md)
    "digits-fast": {"lr": 1e-3, "batch_size": 32, "steps": 2000, "lr_schedule": "cosine", "min_snr_gamma": 5.0},
}


@dataclass
class TrainConfig:
    """Everything a training run needs.  ``model``, ``schedule`` and ``data`` are the component configs.

    Class-conditional runs: ``data.class_cond`` turns them on, ``data.class_names`` names the classes (the network's
    ``model.num_classes`` follows it), and ``label_dropout`` is the probability with which a training label is
    replaced by "no class", so that the network also learns the unconditional eps_theta(x_t, t) that classifier-free
    guidance needs (Ho & Salimans 2022 train with 0.1 or 0.2).  :attr:`class_names` says whether a run is
    conditional and what its classes are.
    """

    run_dir: str = "runs/digits"
    model: UNetConfig = field(default_factory=lambda: preset("digits"))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # where a folder's or a table's decoded images are cached (ddpm.data.cache); None: the per-user cache folder
    data_cache: str | None = None
    # objective (Algorithm 1 is loss="simple"; vlb/hybrid after Nichol & Dhariwal 2021)
    loss: str = "simple"
    variance: str = "fixed-large"
    hybrid_lambda: float = 0.001
    min_snr_gamma: float | None = None  # L_simple weighted by min(SNR_t, gamma) / SNR_t (Hang et al. 2023)
    importance_sampling: bool = False
    label_dropout: float = 0.1  # class-conditional runs: P(label -> "no class") per training image
    # optimisation
    steps: int = 4000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"  # after warm-up: constant (the paper) or cosine decay to 0 at `steps`
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # more EMA decays tracked beside ema_decay (``--ema-decay 0.999,0.9999``: 0.999 here, 0.9999 extra), each saved
    extra_ema_decays: tuple[float, ...] = ()
    # post-hoc EMA (Karras et al. 2024): snapshots of two power-function EMAs every N steps; 0: none tracked
    ema_snapshot_every: int = 0
    seed: int = 0
    # the run or checkpoint folder whose EMA weights the model and its EMA start from (fine-tuning); None: random
    init_from: str | None = None
    # bookkeeping
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    preview_samples: int = 16
    preview_sampler: str = "ddim"
    preview_steps: int = 50
    # watching the run: extra log backends beside metrics.jsonl (training/loggers.py), quality every eval_every steps
    # on eval_samples samples (0: never; the evaluator comes from the CLI), checkpoints/best names the best so far
    loggers: tuple[str, ...] = ()
    eval_every: int = 0
    eval_samples: int = 256
    # hardware
    device: str = "auto"
    precision: str = "auto"
    compile: str = "auto"
    channels_last: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"loss must be one of {LOSS_TYPES}, got {self.loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.variance not in VARIANCE_TYPES:
            raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {self.variance!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.extra_ema_decays = tuple(float(d) for d in self.extra_ema_decays)
        for decay in (self.ema_decay, *self.extra_ema_decays):
            if not 0.0 <= decay <= 1.0:
                raise ValueError(f"ema_decay must lie in [0, 1], got {decay}")
        if len({self.ema_decay, *self.extra_ema_decays}) != 1 + len(self.extra_ema_decays):
            raise ValueError(f"ema_decay: each decay once, got {', '.join(f'{d:g}' for d in self.ema_decays)}")
        if self.ema_snapshot_every < 0:
            raise ValueError(f"ema_snapshot_every must be >= 0 (0: no post-hoc EMA), got {self.ema_snapshot_every}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout} (1 would never show the "
                             "network a label)")
        self.loggers = tuple(self.loggers)
        if self.eval_every < 0 or self.eval_samples < 2:
            raise ValueError(f"eval_every must be >= 0 and eval_samples >= 2, got {self.eval_every} and "
                             f"{self.eval_samples}")
        for name in ("warmup_steps", "weight_decay", "hybrid_lambda", "preview_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_snr_gamma is not None and (self.loss != "simple" or not self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma {self.min_snr_gamma}: Min-SNR weighting takes a gamma > 0 and "
                             f"weighs L_simple (loss simple), not loss {self.loss}; pass --min-snr-gamma 0 to train "
                             "without it")
        if self.variance == "learned-range" and self.loss == "simple":
            raise ValueError("variance learned-range needs loss hybrid or vlb: L_simple never trains the variance "
                             "outputs (Nichol & Dhariwal 2021, Sec. 3.1); pass --loss hybrid")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check_precision(self.precision)
        # the network's shape follows the data and the variance type (learned-range doubles the outputs), its
        # class embedding the data's classes (a folder's are known once it is read: see with_class_names)
        want = {"in_channels": self.data.channels, "image_size": self.data.image_size,
                "out_channels": self.data.channels * (2 if self.variance == "learned-range" else 1)}
        if not self.data.class_cond:
            want["num_classes"] = 0
        elif self.data.class_names is not None:
            want["num_classes"] = len(self.data.class_names)
        have = {"num_classes": 0, **self.model.to_dict()}
        if any(have.get(k) != v for k, v in want.items()):
            try:
                self.model = UNetConfig.from_dict({**have, **want})
            except ValueError as e:
                raise ValueError(f"the network made for {have['image_size']}x{have['image_size']} images does not fit "
                                 f"{self.data.image_size}x{self.data.image_size} data: {e}; choose another image size, "
                                 f"preset or attention resolutions") from None

    @classmethod
    def for_preset(cls, name: str = "digits", **overrides) -> "TrainConfig":
        """The run ``ddpm train --preset NAME`` trains with no other flag: the preset's U-Net and its recipe from
        :data:`PRESET_RECIPES`, then ``overrides`` (any field, ``model`` included).  Without a ``data`` override the
        embedded digits are read at the preset's image size."""
        model = overrides.get("model", preset(name))
        data = DataConfig(image_size=model.image_size)
        return cls(**{"model": model, "data": data, **PRESET_RECIPES.get(name, {}), **overrides})

    @property
    def ema_decays(self) -> tuple[float, ...]:
        """Every EMA decay the run tracks, ``ema_decay`` (saved as ``ema.safetensors``) first."""
        return (self.ema_decay, *self.extra_ema_decays)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The class names of a class-conditional run (label k is ``class_names[k]``), None for an unconditional
        one (or a conditional one whose folder has not been read yet)."""
        return self.data.class_names if self.data.class_cond else None

    def with_class_names(self, names) -> "TrainConfig":
        """A copy whose data has the class ``names`` and whose network one class embedding row per class (plus
        "no class")."""
        return replace(self, data=replace(self.data, class_names=tuple(names)))

    def to_dict(self) -> dict:
        """A JSON-friendly dict; ``label_dropout`` is left out of an unconditional run's (which never uses it), and the
        settings of several EMA decays and of post-hoc EMA when off, so its config.json is the one older versions
        wrote and read."""
        d = asdict(self)
        if not self.data.class_cond:
            del d["label_dropout"]
        for name, off in (("extra_ema_decays", ()), ("ema_snapshot_every", 0)):  # the config.json of before when off
            if d[name] == off:
                del d[name]
        if "extra_ema_decays" in d:
            d["extra_ema_decays"] = list(d["extra_ema_decays"])
        if self.data_cache is None:  # the default: left out, so the config.json is the one older versions wrote
            del d["data_cache"]
        d["model"] = self.model.to_dict()
        d["schedule"] = self.schedule.to_dict()
        d["data"] = self.data.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        parts = {"model": UNetConfig.from_dict(d.get("model", {})),
                 "schedule": ScheduleConfig.from_dict(d.get("schedule", {})),
                 "data": DataConfig.from_dict(d.get("data", {}))}
        # "distributed" and "imported" (ddpm import's record of where the weights came from) are for reading only
        return from_known_fields(cls, {**d, **parts}, "config", extra=("distributed", "imported"))
