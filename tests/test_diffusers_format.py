"""The diffusers format, translated (ddpm.runs.diffusers_format): random UNet2DModels built from the DDPM paper's
configurations at reduced width compute what ddpm's U-Net computes with the translated config and weights; the
schedules agree with DDPMScheduler's; weights round-trip bit for bit; what ddpm cannot express is refused in one line
naming the field."""
import inspect
import json
import math

import pytest
import torch

from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.model.unet import UNet, UNetConfig, preset
from ddpm.runs.checkpoint import CheckpointError
from ddpm.runs.diffusers_format import (
    _EXPORTED_FIELDS,
    SCHEDULER_DEFAULTS,
    UNET_DEFAULTS,
    diffusers_scheduler_config,
    diffusers_unet_config,
    key_pairs,
    same_network,
    schedule_from_diffusers,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()

#: google/ddpm-cifar10-32's unet/config.json at 32 channels instead of 128 (everything else as published)
CIFAR10 = dict(_class_name="UNet2DModel", sample_size=32, in_channels=3, out_channels=3,
               block_out_channels=[32, 64, 64, 64], layers_per_block=2,
               down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
               time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
               norm_eps=1e-6, norm_num_groups=32, act_fn="silu", attention_head_dim=None, center_input_sample=False,
               mid_block_scale_factor=1)
#: google/ddpm-church-256 (and bedroom, cat, celebahq) at an eighth of the width, built for 64 px input
LSUN256 = {**CIFAR10, "sample_size": 64, "block_out_channels": [16, 16, 32, 32, 64, 64], "norm_num_groups": 8,
           "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}
#: UNet2DModel at diffusers' own defaults for every switch: cos first, no frequency shift, eps 1e-5, symmetric
#: padding, heads 8 channels wide, attention at three levels
DEFAULTS_STYLE = {**CIFAR10, "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "flip_sin_to_cos": True,
                  "freq_shift": 0, "norm_eps": 1e-5, "downsample_padding": 1, "attention_head_dim": 8,
                  "down_block_types": ["DownBlock2D"] + ["AttnDownBlock2D"] * 3,
                  "up_block_types": ["AttnUpBlock2D"] * 3 + ["UpBlock2D"]}
LEARNED = {**CIFAR10, "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "out_channels": 6,
           "dropout": 0.1}


def random_unet2d(config: dict, seed: int = 0):
    """A UNet2DModel of ``config`` with non-zero random weights everywhere: He-scaled weights, GroupNorm scales
    about 1, biases about 0.1."""
    model = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(scale + 0.1 * torch.randn(p.shape, generator=g))
    return model


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("config", [CIFAR10, LSUN256, DEFAULTS_STYLE, LEARNED],
                         ids=["cifar10-32ch", "lsun256-at-64px", "diffusers-defaults", "learned-range"])
def test_imported_network_computes_what_diffusers_computes(config):
    theirs = random_unet2d(config)
    cfg = unet_config_from_diffusers(config, "config.json")
    ours = UNet(cfg).eval()
    ours.load_state_dict(state_dict_from_diffusers(theirs.state_dict(), cfg, "weights"))
    size = config["sample_size"]
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 500, 999])
    with torch.no_grad():
        difference = relative_difference(ours(x, t), theirs(x, t).sample)
    assert difference < 1e-5, difference


def test_the_published_configs_translate_to_the_papers_networks():
    full = unet_config_from_diffusers({**CIFAR10, "block_out_channels": [128, 256, 256, 256]}, "config.json")
    # the paper's CIFAR-10 network, with the switches Ho et al.'s TensorFlow code implies
    assert full == UNetConfig(dropout=0.0, downsample_padding="bottom-right")
    with torch.device("meta"):
        config = {**CIFAR10, "block_out_channels": [128, 256, 256, 256]}
        theirs = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        ours = sum(p.numel() for p in UNet(full).parameters())
        assert ours == sum(p.numel() for p in theirs.parameters()) == 35_746_307
    lsun = unet_config_from_diffusers({**LSUN256, "sample_size": 256, "norm_num_groups": 32,
                                       "block_out_channels": [128, 128, 256, 256, 512, 512]}, "config.json")
    assert (lsun.channel_mult, lsun.attention_resolutions, lsun.image_size) == ((1, 1, 2, 2, 4, 4), (16,), 256)
    with torch.device("meta"):
        assert sum(p.numel() for p in UNet(lsun).parameters()) == 113_673_219  # the 256 px models' count


def test_defaults_are_diffusers_own():
    """A key missing from a config.json takes diffusers' default, as diffusers itself would load it."""
    sig = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in UNET_DEFAULTS.items()} == \
        {k: list(p.default) if isinstance(p.default, tuple) else p.default for k, p in sig.items() if k != "self"}
    sched = inspect.signature(diffusers.DDPMScheduler.__init__).parameters
    assert all(sched[k].default == v for k, v in SCHEDULER_DEFAULTS.items())


def test_weights_round_trip_bit_for_bit_and_legacy_names_are_read():
    theirs = random_unet2d(DEFAULTS_STYLE).state_dict()
    cfg = unet_config_from_diffusers(DEFAULTS_STYLE, "config.json")
    ours = state_dict_from_diffusers(theirs, cfg, "weights")
    back = state_dict_to_diffusers(ours)
    assert set(back) == set(theirs) and all(torch.equal(back[k], theirs[k]) for k in theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours.values(), state_dict_from_diffusers(back, cfg, "w").values()))
    legacy = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
              .replace(".to_out.0.", ".proj_attn."): v for k, v in theirs.items()}  # diffusers before 0.17
    assert any(".query." in k for k in legacy)
    assert all(torch.equal(ours[k], v) for k, v in state_dict_from_diffusers(legacy, cfg, "w").items())


def test_weights_that_do_not_fit_are_named():
    theirs = random_unet2d(LEARNED).state_dict()
    cfg = unet_config_from_diffusers(LEARNED, "config.json")
    with pytest.raises(CheckpointError, match=r"^w: no conv_in\.weight \(for ddpm's conv_in\.weight\)"):
        state_dict_from_diffusers({k: v for k, v in theirs.items() if k != "conv_in.weight"}, cfg, "w")
    with pytest.raises(CheckpointError, match=r"^w: extra\.weight have no place"):
        state_dict_from_diffusers({**theirs, "extra.weight": torch.ones(1)}, cfg, "w")
    with pytest.raises(CheckpointError, match=r"conv_out\.weight has shape \[6, 16, 3, 3\], ddpm's conv_out\.weight "
                                              r"needs \[3, 16, 3, 3\]; the weights do not belong"):
        state_dict_from_diffusers(theirs, unet_config_from_diffusers({**LEARNED, "out_channels": 3}, "c"), "w")


@pytest.mark.parametrize("config, schedule", [
    ({"beta_schedule": "linear"}, ScheduleConfig()),
    ({"beta_schedule": "linear", "num_train_timesteps": 200, "beta_start": 1e-3, "beta_end": 0.05},
     ScheduleConfig(num_timesteps=200, beta_start=1e-3, beta_end=0.05)),
    ({"beta_schedule": "squaredcos_cap_v2"}, ScheduleConfig(kind="cosine")),
])
def test_imported_schedule_is_the_schedulers(config, schedule):
    got, variance, notes = schedule_from_diffusers({"_class_name": "DDPMScheduler", **config}, "scheduler_config.json")
    assert got == schedule and variance == "fixed-small" and notes == []
    theirs = diffusers.DDPMScheduler(**config)
    ours = make_schedule(got)
    # diffusers keeps everything in float32, ddpm in float64: they agree to float32 rounding, step for step
    torch.testing.assert_close(ours.alpha_bars, theirs.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("schedule, variance", [(ScheduleConfig(), "fixed-large"),
                                                (ScheduleConfig(kind="cosine"), "fixed-small"),
                                                (ScheduleConfig(kind="cosine", cosine_s=0.02, max_beta=0.5),
                                                 "learned-range"),
                                                (ScheduleConfig(num_timesteps=50, beta_end=0.3), "fixed-small")])
def test_exported_schedule_loads_in_diffusers_with_the_same_betas(schedule, variance):
    ours = make_schedule(schedule)
    written = json.loads(json.dumps(diffusers_scheduler_config(schedule, variance, ours.betas)))
    theirs = diffusers.DDPMScheduler.from_config(written)
    torch.testing.assert_close(theirs.betas, ours.betas.float(), rtol=1e-6, atol=0)
    assert theirs.config.variance_type == variance.replace("-", "_") and theirs.config.clip_sample
    assert (written["trained_betas"] is not None) == (schedule.cosine_s != 0.008)
    back = schedule_from_diffusers(written, "s", known=schedule)
    assert back[:2] == (schedule, variance)


@pytest.mark.parametrize("cfg", [UNetConfig(), preset("digits"), preset("tiny"),
                                 UNetConfig(base_channels=32, head_channels=16, norm_eps=1e-5, num_groups=8,
                                            time_embedding_order="cos-sin", time_freq_shift=0.0),
                                 UNetConfig(base_channels=32, num_heads=4, num_groups=8, out_channels=6)])
def test_exported_network_config_builds_the_same_network_in_diffusers(cfg):
    written = json.loads(json.dumps(diffusers_unet_config(cfg)))
    assert same_network(unet_config_from_diffusers(written, "c"), cfg)
    with torch.device("meta"):
        theirs = diffusers.UNet2DModel.from_config(written)
        ours = UNet(cfg).state_dict()
    assert {name for _, names in key_pairs(ours) for name in names} == set(theirs.state_dict())
    for key, names in key_pairs(ours):  # and every shape fits (three (C, C) linears make one (3C, C, 1, 1) conv)
        assert sum(theirs.state_dict()[n].numel() for n in names) == ours[key].numel(), key


def test_every_network_setting_is_known_to_the_exporter():
    """A field added to UNetConfig must be taught to diffusers_unet_config (or refused there), never dropped."""
    from dataclasses import fields
    assert {f.name for f in fields(UNetConfig)} == set(_EXPORTED_FIELDS)


@pytest.mark.parametrize("change, field", [
    ({"class_embed_type": "timestep"}, "class_embed_type"), ({"num_class_embeds": 10}, "num_class_embeds"),
    ({"time_embedding_type": "fourier"}, "time_embedding_type"),
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"center_input_sample": True}, "center_input_sample"), ({"mid_block_scale_factor": 2}, "mid_block_scale_factor"),
    ({"add_attention": False}, "add_attention"), ({"act_fn": "gelu"}, "act_fn"),
    ({"downsample_type": "resnet"}, "downsample_type"), ({"attn_norm_num_groups": 8}, "attn_norm_num_groups"),
    ({"time_embedding_dim": 64}, "time_embedding_dim"), ({"block_out_channels": [32, 48, 64, 64]},
                                                         "block_out_channels"),
    ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]}, "down_block_types"),
    ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "up_block_types"),
    ({"attention_head_dim": 24}, "attention_head_dim"), ({"out_channels": 4}, "out_channels"),
    ({"norm_num_groups": 24}, "norm_num_groups"), ({"downsample_padding": 2}, "downsample_padding"),
    ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
])
def test_unsupported_network_configs_are_refused_in_one_line_naming_the_field(change, field):
    with pytest.raises(CheckpointError) as err:
        unet_config_from_diffusers({**CIFAR10, **change}, "unet/config.json")
    message = str(err.value)
    assert message.startswith("unet/config.json: ") and field in message and "\n" not in message


def test_missing_sample_size_needs_the_image_size():
    config = {k: v for k, v in CIFAR10.items() if k != "sample_size"}
    with pytest.raises(CheckpointError, match="sample_size is not set; pass --image-size"):
        unet_config_from_diffusers(config, "c")
    assert unet_config_from_diffusers(config, "c", image_size=32).attention_resolutions == (16,)


@pytest.mark.parametrize("change, field", [
    ({"prediction_type": "v_prediction"}, "prediction_type"), ({"thresholding": True}, "thresholding"),
    ({"beta_schedule": "scaled_linear"}, "beta_schedule"), ({"trained_betas": [0.1] * 1000}, "trained_betas"),
    ({"variance_type": "learned"}, "variance_type"), ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
])
def test_unsupported_schedulers_are_refused_in_one_line_naming_the_field(change, field):
    with pytest.raises(CheckpointError) as err:
        schedule_from_diffusers({"_class_name": "DDPMScheduler", **change}, "scheduler_config.json")
    assert field in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300


def test_scheduler_notes_what_ddpm_samples_differently():
    _, _, notes = schedule_from_diffusers({"clip_sample": False, "variance_type": "fixed_large_log"}, "s")
    assert notes == ["the scheduler does not clip x_0 to [-1, 1]; ddpm sample does unless given --no-clip"]


@pytest.mark.parametrize("cfg, field", [
    (preset("tiny", channel_mult=(2, 2)), "channel_mult"),
    (UNetConfig(base_channels=12, num_groups=8), "num_groups 8 does not divide the 12 channels"),
    (UNetConfig(base_channels=32, channel_mult=(1, 2), attention_resolutions=(32,), num_heads=2, num_groups=8),
     "num_heads 2 makes heads [16, 32] channels wide"),
])
def test_networks_diffusers_cannot_hold_are_refused(cfg, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        diffusers_unet_config(cfg)
