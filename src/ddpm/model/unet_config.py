"""The hyper-parameters of the U-Net (:class:`UNetConfig`), its named presets and the diffusers switches.

Split from :mod:`ddpm.model.unet`, which still exports every name here; see its docstring for the layout the
fields describe.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..core.config_io import from_known_fields

__all__ = ["UNetConfig", "PRESETS", "preset", "DOWNSAMPLE_PADDINGS", "TIME_EMBEDDING_ORDERS", "SWITCHES"]

#: how the stride-2 downsampling conv pads: 1 pixel all round, or 1 at the bottom and right only (TensorFlow's
#: "SAME" at stride 2, as in Ho et al.'s code; diffusers' ``downsample_padding=0``)
DOWNSAMPLE_PADDINGS = ("symmetric", "bottom-right")
#: the halves of the sinusoidal timestep embedding: sin then cos (Ho et al.), or cos then sin (diffusers'
#: ``flip_sin_to_cos=True``)
TIME_EMBEDDING_ORDERS = ("sin-cos", "cos-sin")



@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet`. Defaults are the paper's CIFAR-10 network.

    in_channels: image channels C.  out_channels: output channels (None = in_channels; 2 * C when the
    network also predicts a variance).  base_channels: ch, the width of the top level.
    channel_mult: level i has ch * channel_mult[i] channels; there are len(channel_mult) - 1 downsamplings.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_resolutions: feature-map sizes (in pixels, e.g. (16,)) that get self-attention.
    dropout: dropout rate inside residual blocks.  image_size: the square training size, used to decide
    where attention goes and checked for divisibility.  num_groups: the GroupNorm group count, lowered per
    layer to the largest divisor of that layer's width (see :func:`group_count`).  num_heads: attention heads.

    num_classes: K > 0 makes the network class-conditional (K classes plus the "no class" label K); 0 (the
    default) is the unconditional network of the paper.

    The switches, each defaulting to ddpm's own behaviour (the values of Ho et al.'s code, except
    ``downsample_padding``); :data:`SWITCHES` lists them:
    norm_eps: the epsilon of every GroupNorm.  downsample_padding: one of :data:`DOWNSAMPLE_PADDINGS`.
    time_embedding_order: one of :data:`TIME_EMBEDDING_ORDERS`.  time_freq_shift: the shift s in the embedding's
    frequencies max_period ** (-j / (dim / 2 - s)) (1 in Ho et al.'s code, 0 in diffusers' default).
    head_channels: channels per attention head; when set, a layer of width w has w // head_channels heads
    (diffusers' ``attention_head_dim``) and ``num_heads`` is not used; None: ``num_heads`` heads everywhere.
    Only the switches that differ from their defaults are written by :meth:`to_dict`, so the config.json of a
    network that uses none of them reads as it did before they existed.
    """

    in_channels: int = 3
    out_channels: int | None = None
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    image_size: int = 32
    num_groups: int = 32
    num_heads: int = 1
    num_classes: int = 0
    # switches (SWITCHES): defaults are ddpm's behaviour
    norm_eps: float = 1e-6
    downsample_padding: str = "symmetric"
    time_embedding_order: str = "sin-cos"
    time_freq_shift: float = 1.0
    head_channels: int | None = None

    def __post_init__(self):
        # JSON gives lists back; keep tuples so configs compare equal and stay hashable.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        for name in ("in_channels", "base_channels", "image_size", "num_groups", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a whole number >= 0 (0: unconditional), got {self.num_classes!r}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1 or None, got {self.out_channels}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"downsample_padding must be one of {DOWNSAMPLE_PADDINGS}, "
                             f"got {self.downsample_padding!r}")
        if self.time_embedding_order not in TIME_EMBEDDING_ORDERS:
            raise ValueError(f"time_embedding_order must be one of {TIME_EMBEDDING_ORDERS}, "
                             f"got {self.time_embedding_order!r}")
        if self.head_channels is not None and self.head_channels < 1:
            raise ValueError(f"head_channels must be >= 1 or None, got {self.head_channels}")
        self.validate_image_size(self.image_size)
        sizes = self.resolutions
        missing = [r for r in self.attention_resolutions if r not in sizes]
        if missing:
            raise ValueError(f"attention_resolutions {missing} are not feature-map sizes of this network; "
                             f"with image_size {self.image_size} and {len(self.channel_mult)} levels they are {sizes}")
        for level, res in enumerate(sizes):
            width = self.base_channels * self.channel_mult[level]
            if res not in self.attention_resolutions and level != len(sizes) - 1:
                continue
            if self.head_channels is not None and width % self.head_channels:
                raise ValueError(f"head_channels {self.head_channels} must divide the {width} channels at {res}x{res}")
            if self.head_channels is None and width % self.num_heads:
                raise ValueError(f"num_heads {self.num_heads} must divide the {width} channels at {res}x{res}")

    def heads(self, width: int) -> int:
        """The attention heads of a layer ``width`` channels wide: width // head_channels, else num_heads."""
        return self.num_heads if self.head_channels is None else width // self.head_channels

    @property
    def output_channels(self) -> int:
        """out_channels with None resolved to in_channels."""
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def conditional(self) -> bool:
        """Whether the network takes a class label: num_classes > 0."""
        return self.num_classes > 0

    @property
    def num_downsamples(self) -> int:
        """How many times the feature map is halved: len(channel_mult) - 1."""
        return len(self.channel_mult) - 1

    @property
    def size_divisor(self) -> int:
        """Image height and width must be multiples of this: 2 ** num_downsamples."""
        return 2 ** self.num_downsamples

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level for a square ``image_size`` input."""
        return tuple(self.image_size // 2 ** i for i in range(len(self.channel_mult)))

    def validate_image_size(self, size) -> None:
        """Raise ValueError unless every side in ``size`` (an int or an (H, W) pair) is a multiple of
        2**num_downsamples."""
        sides = (size,) if isinstance(size, int) else tuple(size)
        bad = [s for s in sides if s < 1 or s % self.size_divisor]
        if bad:
            raise ValueError(f"image size {'x'.join(map(str, sides))} is not usable: with channel_mult "
                             f"{self.channel_mult} ({self.num_downsamples} downsamplings) each side must be a "
                             f"positive multiple of {self.size_divisor}")

    def to_dict(self) -> dict:
        """A JSON-friendly dict (tuples become lists; :meth:`from_dict` turns them back), without the switches
        that are at their defaults and without ``num_classes`` when it is 0, so the config.json of a network that
        uses none of them reads as older versions wrote and read it."""
        d = asdict(self)
        if not self.num_classes:
            del d["num_classes"]
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        for name, default in SWITCHES.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are ignored with a warning."""
        return from_known_fields(cls, d, "model")


#: the switch fields of :class:`UNetConfig` and their defaults (ddpm's behaviour)
SWITCHES = {f.name: f.default for f in fields(UNetConfig)
            if f.name in ("norm_eps", "downsample_padding", "time_embedding_order", "time_freq_shift", "head_channels")}

PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, Appendix B: the CIFAR-10 network, 35.7M parameters.
    "cifar10": UNetConfig(),
    # 1-channel 32x32 digits on two CPU cores. Narrow at full resolution, where the FLOPs are, and wide at
    # 8x8 and 4x4, where they are cheap: about the parameters of a (32, 64, 64) net at 40% of its FLOPs
    # (0.58 vs 1.49 GFLOP per training image) and about twice its training img/s (benchmarks/unet_speed.py).
    "digits": UNetConfig(in_channels=1, base_channels=16, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                         attention_resolutions=(8,), dropout=0.0, image_size=32, num_groups=8),
    # The digits at their own 28x28 (no padding to 32): the digits preset without its 4x4 level (28 halves only
    # twice), 0.69M parameters, 1.3x its training img/s; with its recipe (runs/config.py) under a third of the
    # digits preset's minutes, and with the digits' labels (make demo) better samples (docs/performance.md,
    # "Time to quality").
    "digits-fast": UNetConfig(in_channels=1, base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
                              attention_resolutions=(7,), dropout=0.0, image_size=28, num_groups=8),
    # For tests: a few thousand parameters, still with attention and a skip path at every level.
    "tiny": UNetConfig(in_channels=1, base_channels=4, channel_mult=(1, 1), num_res_blocks=1,
                       attention_resolutions=(4,), dropout=0.0, image_size=8, num_groups=2),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The named config from :data:`PRESETS`, with any field replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
