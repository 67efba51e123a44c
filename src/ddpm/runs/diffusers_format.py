"""The diffusers format, translated: ``UNet2DModel`` configs and weights, and ``DDPMScheduler`` configs.

diffusers (the Hugging Face library) publishes the DDPM paper's networks (google/ddpm-cifar10-32 and the 256 px
CelebA-HQ, LSUN church and bedroom models) as a ``DDPMPipeline`` folder::

    model_index.json                              {"_class_name": "DDPMPipeline", "unet": [...], "scheduler": [...]}
    unet/config.json                              the UNet2DModel's constructor arguments
    unet/diffusion_pytorch_model.safetensors      its weights (or .bin, a torch.save file)
    scheduler/scheduler_config.json               the DDPMScheduler's: betas, variance type, clipping

This module translates between those files and ddpm's own objects, with no diffusers import: a config is JSON,
weights are a dict of tensors.  :mod:`ddpm.runs.diffusers_io` reads and writes the folders.

The network.  A ``UNet2DModel`` built of ``DownBlock2D`` / ``AttnDownBlock2D`` levels is the same computation
as :class:`ddpm.model.unet.UNet` once the U-Net's switches are set (:func:`unet_config_from_diffusers`):

================================  ==========================================================
diffusers (``config.json``)       ddpm (:class:`~ddpm.model.unet.UNetConfig`)
================================  ==========================================================
block_out_channels                base_channels = the first; channel_mult = each / the first
layers_per_block                  num_res_blocks
Attn*Block2D levels               attention_resolutions (sample_size / 2**level)
norm_num_groups, norm_eps         num_groups, norm_eps
downsample_padding 1 / 0          downsample_padding "symmetric" / "bottom-right"
flip_sin_to_cos False / True      time_embedding_order "sin-cos" / "cos-sin"
freq_shift                        time_freq_shift
attention_head_dim None / d       one head / head_channels d
out_channels 2 * in_channels      a learned-range variance output (variance_type learned_range)
================================  ==========================================================

Anything else (other block types, cross-attention, class embeddings, a Fourier or learned time embedding, a
scale-shift time conditioning, ...) has no ddpm counterpart and is refused with one line naming the field.
Keys map one to one, except that ddpm keeps attention's q, k and v in one 1x1 convolution (``qkv``) where
diffusers has three linear layers (``to_q``, ``to_k``, ``to_v``), and its output projection as a 1x1
convolution (``proj``) where diffusers has a linear one (``to_out.0``); the values are the same numbers.
diffusers files older than 0.17 (the google/ddpm-* ``.bin`` weights among them) name the attention layers
``query``, ``key``, ``value`` and ``proj_attn``; both spellings are read.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import fields, replace

import torch

from ..core.diffusion import VARIANCE_TYPES
from ..core.schedule import ScheduleConfig, make_schedule
from ..model.unet import UNet, UNetConfig
from .checkpoint import CheckpointError

__all__ = ["DIFFUSERS_VERSION", "UNET_DEFAULTS", "SCHEDULER_DEFAULTS", "unet_config_from_diffusers",
           "diffusers_unet_config", "same_network", "key_pairs", "state_dict_from_diffusers", "state_dict_to_diffusers",
           "schedule_from_diffusers", "diffusers_scheduler_config"]

#: the diffusers release whose format ddpm writes, and against which the translation is tested
DIFFUSERS_VERSION = "0.42.1"

#: ``UNet2DModel``'s defaults (diffusers 0.42.1): a key missing from a config.json takes this value when diffusers
#: loads it, so it does here too.  Several differ from Ho et al.'s network (flip_sin_to_cos, freq_shift, norm_eps,
#: attention_head_dim, downsample_padding); the published DDPM configs set those explicitly.
UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}

#: ``DDPMScheduler``'s defaults (diffusers 0.42.1) for the keys that decide the betas and the sampler
SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "clip_sample_range": 1.0, "rescale_betas_zero_snr": False,
}

#: UNet2DModel settings that must hold these values for the network to be ddpm's (alternatives spelled alike)
_REQUIRED = {
    "center_input_sample": (False,), "time_embedding_type": ("positional",), "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,), "downsample_type": ("conv",), "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"), "resnet_time_scale_shift": ("default",), "add_attention": (True,),
    "class_embed_type": (None,),
}
_PADDING = {1: "symmetric", 0: "bottom-right"}
_VARIANCE_FROM = {"fixed_small": "fixed-small", "fixed_small_log": "fixed-small", "fixed_large": "fixed-large",
                  "fixed_large_log": "fixed-large", "learned_range": "learned-range"}
_VARIANCE_TO = {"fixed-small": "fixed_small", "fixed-large": "fixed_large", "learned-range": "learned_range"}
#: the fields of UNetConfig that :func:`diffusers_unet_config` knows how to write (a field added later must be
#: taught to it, or a network using that field is refused rather than exported without it)
_EXPORTED_FIELDS = ("in_channels", "out_channels", "base_channels", "channel_mult", "num_res_blocks",
                    "attention_resolutions", "dropout", "image_size", "num_groups", "num_heads", "norm_eps",
                    "downsample_padding", "time_embedding_order", "time_freq_shift", "head_channels", "num_classes")


# ------------------------------------------------------------------------------------------------ the network

def unet_config_from_diffusers(config: dict, where, image_size: int | None = None,
                               num_classes: int | None = None) -> UNetConfig:
    """The :class:`UNetConfig` of the network a ``UNet2DModel`` config.json describes, or a one-line
    :class:`CheckpointError` naming ``where`` (the file) and the field ddpm cannot reproduce.

    ``image_size`` stands in for a missing ``sample_size`` (which places the attention levels in pixels).
    A class embedding (``num_class_embeds``) is read only when ``num_classes`` says what its rows are: K classes
    and, last, ddpm's "no class" row (K + 1 rows, what ``ddpm export`` writes of a class-conditional run); the
    rows of another library's class embedding carry no such meaning, so such a network is refused."""
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise CheckpointError(f"{where}: a {name}, not a UNet2DModel; ddpm reads the unconditional DDPM network only")
    c = {**UNET_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}

    def refuse(key, why):
        raise CheckpointError(f"{where}: {key} = {_json(c[key])}: {why}")

    for key, allowed in _REQUIRED.items():
        if c[key] not in allowed:
            refuse(key, f"ddpm's U-Net has no such option (it needs {' or '.join(_json(a) for a in allowed)})")
    rows = c["num_class_embeds"]
    if rows is not None and (num_classes is None or rows != num_classes + 1):
        refuse("num_class_embeds", "a class embedding whose rows ddpm cannot place; ddpm reads the class-conditional "
                                   "networks that ddpm export wrote (with ddpm_config.json: K classes, then "
                                   "'no class')")
    widths = c["block_out_channels"]
    if not isinstance(widths, (list, tuple)) or not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        refuse("block_out_channels", "expected a list of positive widths")
    base = widths[0]
    if any(w % base for w in widths):
        refuse("block_out_channels", "every width must be a multiple of the first (ddpm's channel_mult)")
    if c["time_embedding_dim"] not in (None, 4 * base):
        refuse("time_embedding_dim", f"ddpm's time embedding is 4 x block_out_channels[0] = {4 * base} wide")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1 or any(w % groups for w in widths):
        refuse("norm_num_groups", f"expected a group count dividing every width {list(widths)}")
    if c["attn_norm_num_groups"] not in (None, groups):
        refuse("attn_norm_num_groups", "ddpm's attention normalises with norm_num_groups groups")
    if c["downsample_padding"] not in _PADDING:
        refuse("downsample_padding", "expected 1 (symmetric) or 0 (bottom and right only)")
    if not isinstance(c["layers_per_block"], int) or c["layers_per_block"] < 1:
        refuse("layers_per_block", "expected one positive number for every level")
    attention = _attention_levels(c, widths, refuse)
    size = _square_size(c["sample_size"], where, image_size, refuse)
    head_dim = c["attention_head_dim"]
    attention_widths = {w for w, a in zip(widths, attention) if a} | {widths[-1]}
    if head_dim is not None and (not isinstance(head_dim, int) or head_dim < 1
                                 or any(w % head_dim for w in attention_widths)):
        refuse("attention_head_dim", f"expected one head width dividing every attention layer's width "
                                     f"{sorted(attention_widths)}")
    in_ch, out_ch = c["in_channels"], c["out_channels"]
    if out_ch not in (in_ch, 2 * in_ch):
        refuse("out_channels", f"expected in_channels ({in_ch}) for eps, or twice that with a learned-range variance")
    try:
        return UNetConfig(in_channels=in_ch, out_channels=None if out_ch == in_ch else out_ch, base_channels=base,
                          channel_mult=tuple(w // base for w in widths), num_res_blocks=c["layers_per_block"],
                          attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attention) if a),
                          dropout=float(c["dropout"]), image_size=int(size), num_groups=groups,
                          norm_eps=float(c["norm_eps"]), downsample_padding=_PADDING[c["downsample_padding"]],
                          time_embedding_order="cos-sin" if c["flip_sin_to_cos"] else "sin-cos",
                          time_freq_shift=float(c["freq_shift"]), head_channels=head_dim,
                          num_classes=0 if rows is None else rows - 1)
    except ValueError as e:  # e.g. a sample_size the levels cannot halve
        raise CheckpointError(f"{where}: not a network ddpm can build ({e})") from None


def _attention_levels(c: dict, widths, refuse) -> list[bool]:
    """Which levels of a diffusers config's ``down_block_types``/``up_block_types`` hold attention (checked: one
    block per width, ddpm's two kinds only, the same levels down and up); ``refuse(key, why)`` raises."""
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    for key, blocks in (("down_block_types", down), ("up_block_types", up)):
        if len(blocks) != len(widths):
            refuse(key, f"expected one block type per width of block_out_channels ({len(widths)})")
        kinds = ("DownBlock2D", "AttnDownBlock2D") if key == "down_block_types" else ("UpBlock2D", "AttnUpBlock2D")
        odd = [b for b in blocks if _block_name(b) not in kinds]
        if odd:
            refuse(key, f"{odd[0]} has no ddpm counterpart (ddpm's levels are {kinds[0]} or {kinds[1]})")
    attention = [_block_name(b).startswith("Attn") for b in down]
    if [_block_name(b).startswith("Attn") for b in reversed(up)] != attention:
        refuse("up_block_types", "attention must sit at the same levels on the way down and up, as in ddpm's U-Net")
    return attention


def _square_size(size, where, image_size: int | None, refuse) -> int:
    """The side of ``sample_size`` (an int or a square pair), else ``image_size``; one line where neither fits."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            refuse("sample_size", "ddpm's networks are square")
        size = size[0]
    if size is None:
        if image_size is None:
            raise CheckpointError(f"{where}: sample_size is not set; pass --image-size, the side the network was "
                                  "trained at (it places the attention levels)")
        return image_size
    if image_size is not None and image_size != size:
        raise CheckpointError(f"{where}: sample_size is {size}, not --image-size {image_size}; drop --image-size")
    return size


def _block_name(name: str) -> str:
    """A block type without the ``UNetRes`` prefix diffusers also accepts."""
    return name[len("UNetRes"):] if isinstance(name, str) and name.startswith("UNetRes") else name


def _json(value) -> str:
    """A config value as JSON spells it (null, true, "text"), for messages about JSON files."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def diffusers_unet_config(cfg: UNetConfig) -> dict:
    """The ``UNet2DModel`` config.json of ``cfg``'s network, every key written out (so no diffusers default
    matters), or ValueError naming the ddpm setting that UNet2DModel cannot hold."""
    unknown = [f.name for f in fields(cfg) if f.name not in _EXPORTED_FIELDS and getattr(cfg, f.name) != f.default]
    if unknown:
        raise ValueError(f"the network's {unknown[0]} has no diffusers counterpart that ddpm knows of")
    if cfg.channel_mult[0] != 1:
        raise ValueError(f"channel_mult {list(cfg.channel_mult)} starts at {cfg.channel_mult[0]}; UNet2DModel's first "
                         "level is as wide as its input convolution, so channel_mult must start at 1")
    with torch.device("meta"):  # no memory: only the layer shapes are read
        lowered = [(n, m) for n, m in UNet(cfg).named_modules()
                   if isinstance(m, torch.nn.GroupNorm) and m.num_groups != cfg.num_groups]
    if lowered:
        name, m = lowered[0]
        raise ValueError(f"num_groups {cfg.num_groups} does not divide the {m.num_channels} channels of {name} (ddpm "
                         f"uses {m.num_groups} groups there); UNet2DModel uses one group count everywhere")
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    attention = [r in cfg.attention_resolutions for r in cfg.resolutions]
    if cfg.head_channels is not None:
        head_dim = cfg.head_channels
    elif cfg.num_heads == 1:
        head_dim = None
    else:
        dims = sorted({w // cfg.num_heads for w, a in zip(widths, attention) if a} | {widths[-1] // cfg.num_heads})
        if len(dims) > 1:
            raise ValueError(f"num_heads {cfg.num_heads} makes heads {dims} channels wide in different layers; "
                             "UNet2DModel has one head width (attention_head_dim)")
        head_dim = dims[0]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": cfg.image_size, "in_channels": cfg.in_channels, "out_channels": cfg.output_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
        "flip_sin_to_cos": cfg.time_embedding_order == "cos-sin",
        "freq_shift": int(cfg.time_freq_shift) if float(cfg.time_freq_shift).is_integer() else cfg.time_freq_shift,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": widths, "layers_per_block": cfg.num_res_blocks, "mid_block_scale_factor": 1,
        "downsample_padding": 1 if cfg.downsample_padding == "symmetric" else 0,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": cfg.dropout, "act_fn": "silu",
        "attention_head_dim": head_dim, "norm_num_groups": cfg.num_groups, "attn_norm_num_groups": None,
        "norm_eps": cfg.norm_eps, "resnet_time_scale_shift": "default", "add_attention": True,
        "class_embed_type": None, "num_train_timesteps": None,
        # ddpm's class embedding is diffusers' plain one (added to the time embedding): K classes, then "no class"
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,
    }


# ------------------------------------------------------------------------------------------------ the weights

_RES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "skip": "conv_shortcut"}
_ATTN = {"norm": ("group_norm",), "qkv": ("to_q", "to_k", "to_v"), "proj": ("to_out.0",)}
#: (ddpm key prefix pattern, diffusers prefix, what sits under it)
_PREFIXES = (
    (r"time_mlp\.0\.", "time_embedding.linear_1.", None), (r"time_mlp\.2\.", "time_embedding.linear_2.", None),
    (r"class_emb\.", "class_embedding.", None),
    (r"conv_in\.", "conv_in.", None), (r"norm_out\.", "conv_norm_out.", None), (r"conv_out\.", "conv_out.", None),
    (r"down\.(\d+)\.(\d+)\.res\.", r"down_blocks.\1.resnets.\2.", _RES),
    (r"down\.(\d+)\.(\d+)\.attn\.", r"down_blocks.\1.attentions.\2.", _ATTN),
    (r"downsample\.(\d+)\.conv\.", r"down_blocks.\1.downsamplers.0.conv.", None),
    (r"mid_res1\.", "mid_block.resnets.0.", _RES), (r"mid_attn\.", "mid_block.attentions.0.", _ATTN),
    (r"mid_res2\.", "mid_block.resnets.1.", _RES),
    (r"up\.(\d+)\.(\d+)\.res\.", r"up_blocks.\1.resnets.\2.", _RES),  # level 0 of both is the deepest
    (r"up\.(\d+)\.(\d+)\.attn\.", r"up_blocks.\1.attentions.\2.", _ATTN),
    (r"upsample\.(\d+)\.conv\.", r"up_blocks.\1.upsamplers.0.conv.", None),
)
_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def key_pairs(ddpm_keys) -> list[tuple[str, tuple[str, ...]]]:
    """(ddpm key, its diffusers keys) for every key of a ddpm U-Net state dict: one diffusers key, or three
    (``to_q``, ``to_k``, ``to_v``) for an attention ``qkv``."""
    pairs = []
    for key in ddpm_keys:
        for pattern, prefix, parts in _PREFIXES:
            m = re.match(pattern, key)
            if m:
                break
        else:
            raise KeyError(f"{key}: not a key of ddpm's U-Net")
        head, rest = m.expand(prefix), key[m.end():]
        if parts is None:
            pairs.append((key, (head + rest,)))
            continue
        module, param = rest.split(".", 1)
        names = parts[module] if parts is _ATTN else (parts[module],)
        pairs.append((key, tuple(f"{head}{n}.{param}" for n in names)))
    return pairs


def _current_names(state: dict) -> dict:
    """diffusers weights with the attention names of releases before 0.17 renamed to today's."""
    out = {}
    for k, v in state.items():
        m = re.match(r"(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$", k)
        out[f"{m[1]}{_LEGACY[m[2]]}.{m[3]}" if m else k] = v
    return out


def state_dict_from_diffusers(state: dict, cfg: UNetConfig, where) -> dict:
    """ddpm U-Net weights for ``cfg`` from a UNet2DModel's ``state`` (float32, the values unchanged); a key
    missing or left over, or a shape that differs, is a :class:`CheckpointError` naming ``where`` and the key."""
    src = _current_names(state)
    with torch.device("meta"):
        like = UNet(cfg).state_dict()
    out, used = {}, set()
    for key, names in key_pairs(like):
        missing = [n for n in names if n not in src]
        if missing:
            raise CheckpointError(f"{where}: no {missing[0]} (for ddpm's {key}); the weights do not belong to the "
                                  "network config.json describes")
        parts = [src[n] for n in names]
        want = tuple(like[key].shape)
        t = torch.cat([p.reshape(p.shape[0], -1) if p.ndim > 1 else p for p in parts]) if len(parts) > 1 else parts[0]
        if len(want) == 4 and t.ndim in (2, 3) and want[2:] == (1, 1):  # a linear (or 1-D conv) as a 1x1 conv
            t = t.reshape(t.shape[0], -1, 1, 1)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{where}: {' + '.join(names)} has shape {list(t.shape)}, ddpm's {key} needs "
                                  f"{list(want)}; the weights do not belong to the network config.json describes")
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: {names[0]} holds {t.dtype} values, not weights")
        out[key] = t.to(torch.float32).contiguous()
        used.update(names)
    extra = sorted(set(src) - used)
    if extra:
        raise CheckpointError(f"{where}: {extra[0]}{f' and {len(extra) - 1} more' if len(extra) > 1 else ''} have no "
                              "place in the network config.json describes")
    return out


def state_dict_to_diffusers(state: dict) -> dict:
    """The UNet2DModel weights (today's key names) of ddpm U-Net weights ``state``: fresh contiguous tensors, the
    same values (safetensors writes no views)."""
    out = {}
    for key, names in key_pairs(state):
        t = state[key].detach().to("cpu")
        parts = t.chunk(3, dim=0) if len(names) == 3 else (t,)
        for name, p in zip(names, parts):
            if name.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
                p = p.reshape(p.shape[0], p.shape[1])  # the 1x1 conv's (C_out, C_in, 1, 1) as a linear's (C_out, C_in)
            out[name] = p.contiguous().clone()
    return out


# ------------------------------------------------------------------------------------------------ the schedule

def schedule_from_diffusers(config: dict, where, known: ScheduleConfig | None = None
                            ) -> tuple[ScheduleConfig, str, list[str]]:
    """(schedule, variance type, notes) of a scheduler_config.json, or a one-line :class:`CheckpointError` naming the
    field ddpm cannot reproduce.  ``linear`` betas and ``squaredcos_cap_v2`` (Nichol & Dhariwal's cosine schedule,
    eq. 17, s = 0.008, beta capped at 0.999) are ddpm's two schedules; a list of ``trained_betas`` is read when
    ``known`` (the schedule ``ddpm export`` recorded beside it) gives the same betas.  The notes say what ddpm
    samples differently unless told (x_0 clipping)."""
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}

    def refuse(key, why):
        raise CheckpointError(f"{where}: {key} = {_json(c[key])}: {why}")

    if c["prediction_type"] != "epsilon":
        refuse("prediction_type", "ddpm's networks predict the noise eps (epsilon)")
    if c["thresholding"]:
        refuse("thresholding", "ddpm clips x_0 to [-1, 1] and has no dynamic thresholding")
    if c["rescale_betas_zero_snr"]:
        refuse("rescale_betas_zero_snr", "ddpm's schedules are the linear and cosine ones as published")
    trained = c["trained_betas"]
    if trained is not None and not (known is not None and _same_betas(known, trained)):
        raise CheckpointError(f"{where}: trained_betas is a list of betas; ddpm builds its betas from a linear or "
                              "cosine schedule and reads such a list only beside the ddpm_config.json that made it")
    T = c["num_train_timesteps"]
    if not isinstance(T, int) or T < 1:
        refuse("num_train_timesteps", "expected a positive number of steps")
    kind = c["beta_schedule"]
    try:
        if trained is not None:
            schedule = known
        elif kind == "linear":
            schedule = ScheduleConfig(kind="linear", num_timesteps=T, beta_start=float(c["beta_start"]),
                                      beta_end=float(c["beta_end"]))
        elif kind == "squaredcos_cap_v2":
            schedule = ScheduleConfig(kind="cosine", num_timesteps=T, cosine_s=0.008, max_beta=0.999)
        else:
            refuse("beta_schedule", "ddpm has the linear and the cosine (squaredcos_cap_v2) schedules")
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    variance = c["variance_type"]
    if variance not in _VARIANCE_FROM:
        refuse("variance_type", f"ddpm's variances are {', '.join(_VARIANCE_FROM)} in diffusers' names")
    notes = []
    if not c["clip_sample"]:
        notes.append("the scheduler does not clip x_0 to [-1, 1]; ddpm sample does unless given --no-clip")
    elif c["clip_sample_range"] != 1.0:
        notes.append(f"the scheduler clips x_0 to +-{c['clip_sample_range']}; ddpm sample clips to [-1, 1]")
    return schedule, _VARIANCE_FROM[variance], notes


def _same_betas(schedule: ScheduleConfig, betas) -> bool:
    """Whether ``schedule``'s betas are the list ``betas`` (as float32, the precision diffusers keeps them in)."""
    try:
        theirs = torch.tensor(betas, dtype=torch.float32)
    except (TypeError, ValueError):
        return False
    ours = make_schedule(schedule).betas.to(torch.float32)
    return theirs.shape == ours.shape and bool(torch.allclose(theirs, ours, rtol=1e-6, atol=0))


def diffusers_scheduler_config(schedule: ScheduleConfig, variance: str, betas: torch.Tensor,
                               clip: bool = True) -> dict:
    """The ``DDPMScheduler`` scheduler_config.json that reproduces ``schedule`` (whose betas are ``betas``) and
    ``variance`` (one of :data:`~ddpm.core.diffusion.VARIANCE_TYPES`; diffusers' learned_range is the same
    interpolation, Nichol & Dhariwal 2021, eq. 15).  The linear schedule and the cosine one with s = 0.008 and
    cap 0.999 are written by name; any other cosine as its list of betas (``trained_betas``), so none is lost."""
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"variance must be one of {VARIANCE_TYPES}, got {variance!r}")
    out = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
           "num_train_timesteps": schedule.num_timesteps, "beta_schedule": "linear",
           "beta_start": schedule.beta_start, "beta_end": schedule.beta_end, "trained_betas": None,
           "variance_type": _VARIANCE_TO[variance], "clip_sample": bool(clip), "clip_sample_range": 1.0,
           "prediction_type": "epsilon", "thresholding": False, "dynamic_thresholding_ratio": 0.995,
           "sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0,
           "rescale_betas_zero_snr": False}
    if schedule.kind == "cosine":
        if math.isclose(schedule.cosine_s, 0.008) and math.isclose(schedule.max_beta, 0.999):
            out["beta_schedule"] = "squaredcos_cap_v2"
        else:
            out["trained_betas"] = [float(b) for b in betas]
    return out


def same_network(a: UNetConfig, b: UNetConfig) -> bool:
    """Whether two configs build the same computation with the same weights (they may still spell it
    differently: ``num_heads`` against ``head_channels``, a dropout rate that only training sees)."""
    try:
        return diffusers_unet_config(replace(a, dropout=0.0)) == diffusers_unet_config(replace(b, dropout=0.0))
    except ValueError:
        return a == b
