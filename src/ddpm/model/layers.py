"""The building blocks of the U-Net (:mod:`ddpm.model.unet`): the sinusoidal timestep embedding, group
normalisation, the residual block, self-attention, down- and upsampling (Ho et al. 2020, Appendix B).

Every residual branch's last conv and the attention output projection start at zero (:func:`zero_init`), so an
untrained block is the identity, as in the paper's code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .unet_config import TIME_EMBEDDING_ORDERS, UNetConfig

__all__ = ["group_count", "timestep_embedding", "GroupNorm", "norm_layer", "zero_init", "ResBlock", "AttentionBlock",
           "Downsample", "Upsample", "Stage"]


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


class GroupNorm(nn.GroupNorm):
    """GroupNorm that normalises bf16 channels_last input in float32 on the CPU, where PyTorch's bf16
    channels_last kernel is about 5x slower than the float32 one (benchmarks/cpu_speed.py: +30% img/s for
    bf16 channels_last training).  Same parameters, same state dict, same result up to bf16 rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last)):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def norm_layer(channels: int, num_groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    """A :class:`GroupNorm` of ``channels`` with :func:`group_count` groups (at most ``num_groups``)."""
    return GroupNorm(group_count(channels, num_groups), channels, eps=eps)


def zero_init(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (returned, for use inline)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))) + W SiLU(emb))))), with a 1x1 conv on x when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = norm_layer(in_ch, num_groups, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = norm_layer(out_ch, num_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
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
        self.norm = norm_layer(channels, num_groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

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


class Stage(nn.Module):
    """A ResBlock optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.num_groups, cfg.norm_eps)
        self.attn = AttentionBlock(out_ch, cfg.heads(out_ch), cfg.num_groups, cfg.norm_eps) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x
