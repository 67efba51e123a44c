"""The noise predictor eps_theta(x_t, t[, y]): the U-Net of Ho et al. 2020, Appendix B.

A PixelCNN++-style backbone (Salimans et al. 2017) with group normalisation, a sinusoidal timestep
embedding added to every residual block, and self-attention (one head by default) at chosen feature-map sizes.
The paper's CIFAR-10 network is :func:`preset("cifar10") <preset>` (35.7M parameters).

Class-conditional (``num_classes`` K > 0): a learned embedding of the class label y is added to the time
embedding, as improved-diffusion (Nichol & Dhariwal 2021) does, so every residual block sees both.  The
embedding has K + 1 rows: row K is "no class" (:attr:`UNet.null_class`), the label the trainer substitutes with
probability ``label_dropout`` so that one network learns eps_theta(x_t, t, y) and the unconditional
eps_theta(x_t, t) (classifier-free guidance, Ho & Salimans 2022).  With K = 0 (the default) no embedding is
created: the network, its parameters and its state dict are exactly those of the unconditional U-Net.

The network knows nothing of the noise schedule: ``t`` is the same 0-based index the rest of the
package uses (see :mod:`ddpm.core.schedule`), passed as a (B,) tensor of ints or floats.

Layout (``L = len(channel_mult)`` levels, ``ch = base_channels``, level ``i`` at ``image_size / 2**i``):
  conv_in 3x3 -> ch
  down:   per level ``num_res_blocks`` x (ResBlock [+ Attention]), then a stride-2 conv (not after the last);
          every output is kept for a skip connection
  middle: ResBlock, Attention, ResBlock
  up:     per level, deepest first, ``num_res_blocks + 1`` x (concat skip, ResBlock [+ Attention]),
          then nearest-neighbour x2 + 3x3 conv (not after the top level)
  out:    GroupNorm, SiLU, 3x3 conv -> out_channels, zero-initialised
As in the paper's code, the last conv of every residual branch and the attention output projection are
also zero-initialised, so an untrained network is the identity on each block and outputs exactly zero.

Five switches (config fields whose defaults are the behaviour above, so runs saved before they existed load and
behave as before) let the same module express diffusers' ``UNet2DModel`` configurations, among them the DDPM
paper's own networks as published in that format: ``norm_eps``, ``downsample_padding``, ``time_embedding_order``,
``time_freq_shift`` and ``head_channels`` (see :class:`UNetConfig`; :mod:`ddpm.runs.diffusers_format` maps the two).

The whole batch goes through every layer at once (no Python loop over samples), attention uses
``scaled_dot_product_attention``, and the module works with channels_last tensors, bf16 autocast and
``torch.compile(fullgraph=True)``; the sinusoidal embedding is always computed in float32.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config_io import from_known_fields

__all__ = ["UNetConfig", "PRESETS", "preset", "UNet", "timestep_embedding", "count_parameters", "group_count",
           "DOWNSAMPLE_PADDINGS", "TIME_EMBEDDING_ORDERS", "SWITCHES"]

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


def group_count(channels: int, num_groups: int) -> int:
    """The largest divisor of ``channels`` not above ``num_groups`` (32 in the paper), so any width can be
    normalised."""
    for g in range(min(num_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, *, order: str = "sin-cos",
                       freq_shift: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, Sec. 3.5; as in the DDPM code).

    t: (B,) ints or floats.  Returns (B, dim) float32: [sin(t w_0..w_{h-1}), cos(t w_0..w_{h-1})] (cos first
    with ``order="cos-sin"``) with h = dim // 2 and w_j = max_period ** (-j / (h - freq_shift)); an odd ``dim``
    gets one trailing zero column.  Ho et al.'s code uses shift 1 (w_{h-1} = 1 / max_period), diffusers'
    default is 0.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of timesteps, got shape {tuple(t.shape)}")
    if order not in TIME_EMBEDDING_ORDERS:
        raise ValueError(f"order must be one of {TIME_EMBEDDING_ORDERS}, got {order!r}")
    half = dim // 2
    denominator = half - freq_shift
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / (denominator if denominator > 0 else 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    halves = [torch.sin(args), torch.cos(args)]
    emb = torch.cat(halves if order == "sin-cos" else halves[::-1], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works for models built on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class _GroupNorm(nn.GroupNorm):
    """GroupNorm that normalises bf16 channels_last input in float32 on the CPU, where PyTorch's bf16
    channels_last kernel is about 5x slower than the float32 one (benchmarks/cpu_speed.py: +30% img/s for
    bf16 channels_last training).  Same parameters, same state dict, same result up to bf16 rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last)):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def _norm(channels: int, num_groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    return _GroupNorm(group_count(channels, num_groups), channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))) + W SiLU(emb))))), with a 1x1 conv on x when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = _norm(in_ch, num_groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch, num_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d)) v) over the H*W positions, q, k, v = 1x1 convs of GN(x)."""

    def __init__(self, channels: int, num_heads: int, num_groups: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels, num_groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv.  ``padding`` "symmetric": one zero row and column on every side;
    "bottom-right": one zero row at the bottom and one column at the right only (TensorFlow's "SAME" padding at
    stride 2 on even sizes, the padding of Ho et al.'s code), so output pixel i sees input pixels 2i..2i+2 instead
    of 2i-1..2i+1.  The parameters are the same either way."""

    def __init__(self, channels: int, padding: str = "symmetric"):
        super().__init__()
        self.bottom_right = padding == "bottom-right"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.bottom_right else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bottom_right:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    """A ResBlock optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.num_groups, cfg.norm_eps)
        self.attn = AttentionBlock(out_ch, cfg.heads(out_ch), cfg.num_groups, cfg.norm_eps) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]) of Ho et al. 2020 (Appendix B), built from a :class:`UNetConfig`.

    forward(x, t, y=None): x (B, in_channels, H, W) with H, W multiples of ``config.size_divisor``; t (B,) 0-based
    timesteps; y (B,) integer class labels in 0..num_classes, num_classes meaning "no class" (None: no class for
    every sample), for a class-conditional network only.  Returns (B, output_channels, H, W).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        widths = [ch * m for m in cfg.channel_mult]
        skip_widths = [ch]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cur = ch
        for level, width in enumerate(widths):
            attn = cfg.resolutions[level] in cfg.attention_resolutions
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stages.append(_Stage(cur, width, emb_dim, cfg, attn))
                cur = width
                skip_widths.append(cur)
            self.down.append(stages)
            if level < cfg.num_downsamples:
                self.downsample.append(Downsample(cur, cfg.downsample_padding))
                skip_widths.append(cur)

        self.mid_res1 = ResBlock(cur, cur, emb_dim, cfg.dropout, cfg.num_groups, cfg.norm_eps)
        self.mid_attn = AttentionBlock(cur, cfg.heads(cur), cfg.num_groups, cfg.norm_eps)
        self.mid_res2 = ResBlock(cur, cur, emb_dim, cfg.dropout, cfg.num_groups, cfg.norm_eps)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            attn = cfg.resolutions[level] in cfg.attention_resolutions
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stages.append(_Stage(cur + skip_widths.pop(), widths[level], emb_dim, cfg, attn))
                cur = widths[level]
            self.up.append(stages)
            if level > 0:
                self.upsample.append(Upsample(cur))

        self.norm_out = _norm(cur, cfg.num_groups, cfg.norm_eps)
        self.conv_out = _zero(nn.Conv2d(cur, cfg.output_channels, 3, padding=1))
        # made last, so the other layers start from the same weights as the unconditional network's of that seed
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.conditional else None

    @property
    def null_class(self) -> int | None:
        """The "no class" label (num_classes), or None for an unconditional network."""
        return self.config.num_classes if self.config.conditional else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        cfg.validate_image_size(tuple(x.shape[-2:]))
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")

        emb = self.time_mlp(timestep_embedding(t, cfg.base_channels, order=cfg.time_embedding_order,
                                               freq_shift=cfg.time_freq_shift))
        if self.class_emb is not None:
            emb = emb + self.class_emb(self._labels(y, x.shape[0], emb.device))
        elif y is not None:
            raise ValueError("this network is unconditional (num_classes 0) and takes no class labels y")
        h = self.conv_in(x)
        skips = [h]
        for level, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, emb)
                skips.append(h)
            if level < cfg.num_downsamples:
                h = self.downsample[level](h)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)

        for i, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            if i < cfg.num_downsamples:
                h = self.upsample[i](h)

        return self.conv_out(F.silu(self.norm_out(h)))

    def _labels(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """y as (B,) int64 on ``device``; None becomes the "no class" label for every sample."""
        if y is None:
            return torch.full((batch,), self.config.num_classes, dtype=torch.long, device=device)
        if y.ndim == 0:
            y = y.expand(batch)
        if y.shape != (batch,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be a ({batch},) tensor of integer class labels, got {y.dtype} {tuple(y.shape)}")
        return y.to(device=device, dtype=torch.long)
