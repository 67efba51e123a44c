"""The run configuration: one dataclass per component, nested in :class:`TrainConfig`, saved as JSON.

The CLI only maps flags onto these; the trainer, the sampler and the evaluators rebuild everything
they need from the JSON saved beside every checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
PRESET_RECIPES = {"digits": {"lr": 1e-3, "batch_size": 64, "steps": 3000, "lr_schedule": "cosine"}}


@dataclass
class TrainConfig:
    """Everything a training run needs.  ``model``, ``schedule`` and ``data`` are the component configs."""

    run_dir: str = "runs/digits"
    model: UNetConfig = field(default_factory=lambda: preset("digits"))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # objective (Algorithm 1 is loss="simple"; vlb/hybrid after Nichol & Dhariwal 2021)
    loss: str = "simple"
    variance: str = "fixed-large"
    hybrid_lambda: float = 0.001
    importance_sampling: bool = False
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
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        for name in ("warmup_steps", "weight_decay", "hybrid_lambda", "preview_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.variance == "learned-range" and self.loss == "simple":
            raise ValueError("variance learned-range needs loss hybrid or vlb: L_simple never trains the variance "
                             "outputs (Nichol & Dhariwal 2021, Sec. 3.1); pass --loss hybrid")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check_precision(self.precision)
        # the network's shape follows the data and the variance type (learned-range doubles the outputs)
        want = {"in_channels": self.data.channels, "image_size": self.data.image_size,
                "out_channels": self.data.channels * (2 if self.variance == "learned-range" else 1)}
        have = self.model.to_dict()
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

    def to_dict(self) -> dict:
        d = asdict(self)
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
