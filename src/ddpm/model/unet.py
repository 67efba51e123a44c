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

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionBlock as AttentionBlock
from .layers import Downsample as Downsample
from .layers import ResBlock as ResBlock
from .layers import Stage, norm_layer, zero_init
from .layers import Upsample as Upsample
from .layers import group_count as group_count
from .layers import timestep_embedding as timestep_embedding
from .unet_config import DOWNSAMPLE_PADDINGS as DOWNSAMPLE_PADDINGS
from .unet_config import PRESETS as PRESETS
from .unet_config import SWITCHES as SWITCHES
from .unet_config import TIME_EMBEDDING_ORDERS as TIME_EMBEDDING_ORDERS
from .unet_config import UNetConfig as UNetConfig
from .unet_config import preset as preset

# the names of layers.py and unet_config.py are re-exported (``X as X``): ddpm.model.unet stays the one import path
__all__ = ["UNetConfig", "PRESETS", "preset", "UNet", "timestep_embedding", "count_parameters", "group_count",
           "DOWNSAMPLE_PADDINGS", "TIME_EMBEDDING_ORDERS", "SWITCHES", "ResBlock", "AttentionBlock", "Downsample",
           "Upsample"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works for models built on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


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
                stages.append(Stage(cur, width, emb_dim, cfg, attn))
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
                stages.append(Stage(cur + skip_widths.pop(), widths[level], emb_dim, cfg, attn))
                cur = widths[level]
            self.up.append(stages)
            if level > 0:
                self.upsample.append(Upsample(cur))

        self.norm_out = norm_layer(cur, cfg.num_groups, cfg.norm_eps)
        self.conv_out = zero_init(nn.Conv2d(cur, cfg.output_channels, 3, padding=1))
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
