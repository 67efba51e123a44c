"""Tests of the noise predictor eps_theta (ddpm.model.unet): shapes, the paper's size, dependence on t, determinism."""
import json

import pytest
import torch

from ddpm.model.unet import (
    PRESETS,
    SWITCHES,
    UNet,
    UNetConfig,
    count_parameters,
    group_count,
    preset,
    timestep_embedding,
)


def _randomise_zero_inits(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every zero-initialised tensor (final conv, residual-branch convs, attention projections) small random
    values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _t(n, seed=0):
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size, mult, attn", [
    (8, (1, 2), (4,)),
    (16, (1, 2, 2), (8,)),
    (28, (1, 2, 2), (7,)),
    (32, (1, 2, 2, 2), (16,)),
    (64, (1, 2, 2, 2), ()),
])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("out_factor", [1, 2])
def test_output_shape(size, mult, attn, channels, out_factor):
    cfg = UNetConfig(in_channels=channels, out_channels=out_factor * channels if out_factor > 1 else None,
                     base_channels=4, channel_mult=mult, num_res_blocks=1, attention_resolutions=attn,
                     dropout=0.0, image_size=size, num_groups=2)
    model = UNet(cfg)
    _randomise_zero_inits(model)
    x = torch.randn(2, channels, size, size)
    y = model(x, _t(2))
    assert y.shape == (2, out_factor * channels, size, size)
    assert torch.isfinite(y).all()


def test_non_square_input():
    model = UNet(preset("tiny"))
    assert model(torch.randn(1, 1, 8, 16), _t(1)).shape == (1, 1, 8, 16)


def test_cifar10_parameter_count_matches_paper():
    with torch.device("meta"):
        model = UNet(preset("cifar10"))
    n = count_parameters(model)
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n


def test_cifar10_preset_is_the_paper_network():
    cfg = preset("cifar10")
    assert (cfg.in_channels, cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks) == (3, 128, (1, 2, 2, 2), 2)
    assert (cfg.attention_resolutions, cfg.dropout, cfg.image_size, cfg.output_channels) == ((16,), 0.1, 32, 3)


def test_tiny_preset_is_tiny():
    n = count_parameters(UNet(preset("tiny")))
    assert 1_000 <= n <= 10_000, n


def test_preset_overrides_and_unknown_name():
    cfg = preset("digits", out_channels=2, dropout=0.2)
    assert cfg.out_channels == 2 and cfg.dropout == 0.2 and cfg.base_channels == PRESETS["digits"].base_channels
    with pytest.raises(ValueError, match="unknown UNet preset 'nope'; choose one of"):
        preset("nope")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_untrained_model_outputs_exact_zero(name):
    cfg = preset(name)
    model = UNet(cfg)
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        y = model(x, _t(1))
    assert torch.equal(y, torch.zeros_like(y))


def test_output_depends_on_t():
    model = UNet(preset("tiny")).eval()
    _randomise_zero_inits(model)
    x = torch.randn(1, 1, 8, 8).expand(3, -1, -1, -1)
    y = model(x, torch.tensor([0, 1, 999]))
    assert (y[0] - y[1]).abs().max() > 1e-4
    assert (y[0] - y[2]).abs().max() > 1e-3
    # Same x and t, same output: the difference above comes from t alone.
    y2 = model(x, torch.tensor([0, 0, 0]))
    torch.testing.assert_close(y2[0], y2[1])
    torch.testing.assert_close(y2[0], y[0])


def test_int_and_float_timesteps_agree():
    model = UNet(preset("tiny")).eval()
    _randomise_zero_inits(model)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x, torch.tensor([3, 500])), model(x, torch.tensor([3.0, 500.0])))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = UNet(preset("tiny", dropout=0.5))
    _randomise_zero_inits(model)
    x, t = torch.randn(2, 1, 8, 8), _t(2)
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    torch.manual_seed(0)
    a = model(x, t)
    torch.manual_seed(1)
    b = model(x, t)
    assert not torch.allclose(a, b)


def test_batch_independence():
    model = UNet(preset("tiny", dropout=0.3)).eval()
    _randomise_zero_inits(model)
    x, t = torch.randn(5, 1, 8, 8), _t(5)
    full = model(x, t)
    for k in (0, 3):
        alone = model(x[k:k + 1], t[k:k + 1])
        torch.testing.assert_close(alone[0], full[k], rtol=1e-4, atol=1e-5)
    # Changing another sample leaves sample 0 unchanged.
    x2 = x.clone()
    x2[1:] = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(model(x2, t)[0], full[0], rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter():
    model = UNet(preset("tiny"))
    _randomise_zero_inits(model)
    model(torch.randn(2, 1, 8, 8), _t(2)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_channels_last_and_bf16_autocast():
    model = UNet(preset("tiny")).eval()
    _randomise_zero_inits(model)
    x, t = torch.randn(2, 1, 8, 8), _t(2)
    ref = model(x, t)
    cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, t)
    assert y.shape == ref.shape
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_config_json_round_trip():
    cfg = preset("digits", out_channels=2, attention_resolutions=(8, 16))
    back = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.channel_mult, tuple) and isinstance(back.attention_resolutions, tuple)
    with pytest.warns(UserWarning, match="model: ignoring unknown setting future_field"):
        assert UNetConfig.from_dict({**cfg.to_dict(), "future_field": 1}) == cfg


def test_invalid_image_size_raises_helpful_error():
    with pytest.raises(ValueError, match=r"image size 30 .*multiple of 8"):
        preset("cifar10", image_size=30)
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="image size 9x8"):
        UNet(cfg)(torch.randn(1, 1, 9, 8), _t(1))
    with pytest.raises(ValueError) as err:
        cfg.validate_image_size(7)
    assert "\n" not in str(err.value)
    cfg.validate_image_size(12)  # a multiple of 2 ** num_downsamples is fine
    assert cfg.num_downsamples == 1 and preset("cifar10").num_downsamples == 3


def test_other_invalid_configs():
    with pytest.raises(ValueError, match="attention_resolutions"):
        preset("cifar10", attention_resolutions=(12,))
    with pytest.raises(ValueError, match="num_heads"):
        preset("tiny", num_heads=3)
    with pytest.raises(ValueError, match="channel_mult"):
        preset("tiny", channel_mult=())
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\)"):
        UNet(preset("tiny"))(torch.randn(1, 3, 8, 8), _t(1))


def test_group_count_divides_width():
    assert group_count(256, 32) == 32 and group_count(384, 32) == 32
    assert group_count(4, 32) == 4 and group_count(48, 32) == 24 and group_count(7, 32) == 7
    for c in range(1, 70):
        g = group_count(c, 32)
        assert c % g == 0 and 1 <= g <= 32


def test_timestep_embedding():
    t = torch.tensor([0, 1, 10, 999])
    e = timestep_embedding(t, 8)
    assert e.shape == (4, 8) and e.dtype == torch.float32
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # Frequencies 10000^(-j/(half-1)): the first column is sin(t), the last sin column is sin(t / 10000).
    torch.testing.assert_close(e[:, 0], torch.sin(t.float()))
    torch.testing.assert_close(e[:, 3], torch.sin(t.float() / 10000))
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])
    torch.testing.assert_close(e[:, 4:], torch.cos(t[:, None].float() * freqs))
    assert timestep_embedding(t, 7).shape == (4, 7) and not timestep_embedding(t, 7)[:, -1].any()
    assert len({tuple(r.tolist()) for r in timestep_embedding(torch.arange(1000), 32)}) == 1000


def test_torch_compile_matches_eager():
    pytest.importorskip("torch._dynamo")
    model = UNet(preset("tiny")).eval()
    _randomise_zero_inits(model)
    x, t = torch.randn(2, 1, 8, 8), _t(2)
    try:
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        y = compiled(x, t)
    except Exception as exc:  # pragma: no cover - depends on the local toolchain
        pytest.fail(f"torch.compile failed: {exc}")
    torch.testing.assert_close(y, model(x, t))


@pytest.mark.parametrize("name", ["tiny", "digits", "digits-fast"])
def test_same_parameter_shapes_as_diffusers_ddpm_layout(name):
    """diffusers' UNet2DModel built from the config ddpm exports (runs/diffusers_format.py) has our layer shapes."""
    diffusers = pytest.importorskip("diffusers")
    from ddpm.runs.diffusers_format import diffusers_unet_config
    cfg = preset(name)
    ours = UNet(cfg)
    ref = diffusers.UNet2DModel.from_config(diffusers_unet_config(cfg))
    # Attention packs q, k, v into one 1x1 conv here and three linears there, so compare the 3x3 convs
    # (which fix every width and the block layout) shape by shape, and the rest by total count.
    def conv3(m):
        return sorted(tuple(p.shape) for p in m.parameters() if p.ndim == 4 and p.shape[-1] == 3)
    assert conv3(ours) == conv3(ref)
    assert count_parameters(ours) == count_parameters(ref)


#: sha256 (first 16 hex digits) of "key shape" lines of every preset's state dict, unconditional and with 10 classes
#: and a learned variance, as written before model/unet.py was split into unet_config.py, layers.py and unet.py
STATE_DICT_KEYS = {
    ("cifar10", False): (304, "39b83b1839831292"), ("cifar10", True): (305, "acfe8af21f280927"),
    ("digits", False): (206, "902cfc08de060659"), ("digits", True): (207, "6be86bf6ca87609d"),
    ("digits-fast", False): (168, "88c943d7a4eea2ef"), ("digits-fast", True): (169, "cdf22c53a50d362d"),
    ("tiny", False): (126, "3ab763b44088478d"), ("tiny", True): (127, "eb2fbeadd0b41c6a"),
}


@pytest.mark.parametrize("name, conditional", sorted(STATE_DICT_KEYS))
def test_state_dict_keys_and_shapes_are_those_old_checkpoints_hold(name, conditional):
    import hashlib
    kw = {"num_classes": 10, "out_channels": 2 * PRESETS[name].in_channels} if conditional else {}
    with torch.device("meta"):  # shapes only
        state = UNet(preset(name, **kw)).state_dict()
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    assert (len(state), hashlib.sha256(text.encode()).hexdigest()[:16]) == STATE_DICT_KEYS[name, conditional]


def test_groupnorm_fast_path_matches_plain_groupnorm_in_bf16_channels_last():
    """The CPU float32 detour for bf16 channels_last input computes the same normalisation: against float32
    GroupNorm the difference is bf16 rounding of the input only (relative 2^-8, so atol 0.05 on unit outputs)."""
    from ddpm.model.layers import norm_layer
    torch.manual_seed(0)
    gn = norm_layer(16, 8)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(2, 16, 8, 8)
    ref = torch.nn.functional.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps)
    xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = gn(xb)
    assert out.shape == ref.shape
    assert torch.allclose(out.float(), ref, atol=0.05)
    assert torch.equal(gn(x), ref) or torch.allclose(gn(x), ref, atol=1e-6)


# --- the switches that express diffusers' UNet2DModel configurations (defaults: ddpm's behaviour) ---------------

def test_switches_default_to_the_old_behaviour_and_old_configs_load_unchanged():
    cfg = preset("cifar10")
    assert not set(SWITCHES) & set(cfg.to_dict())  # a network without switches writes the config.json it always did
    old = {"in_channels": 3, "out_channels": None, "base_channels": 128, "channel_mult": [1, 2, 2, 2],
           "num_res_blocks": 2, "attention_resolutions": [16], "dropout": 0.1, "image_size": 32, "num_groups": 32,
           "num_heads": 1}  # a config.json written before the switches existed
    assert UNetConfig.from_dict(old) == cfg and cfg.to_dict() == old
    assert (cfg.norm_eps, cfg.downsample_padding, cfg.time_embedding_order, cfg.time_freq_shift,
            cfg.head_channels) == (1e-6, "symmetric", "sin-cos", 1.0, None)
    switched = preset("tiny", norm_eps=1e-5, downsample_padding="bottom-right", time_embedding_order="cos-sin",
                      time_freq_shift=0.0, head_channels=2)
    d = json.loads(json.dumps(switched.to_dict()))
    assert set(SWITCHES) <= set(d) and UNetConfig.from_dict(d) == switched


def test_switches_leave_the_parameters_alone_and_change_the_output():
    base = preset("tiny")
    model = UNet(base).eval()
    _randomise_zero_inits(model)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    ref = model(x, t)
    for change in ({"norm_eps": 1e-2}, {"downsample_padding": "bottom-right"}, {"time_embedding_order": "cos-sin"},
                   {"time_freq_shift": 0.0}):
        other = UNet(preset("tiny", **change)).eval()
        other.load_state_dict(model.state_dict())  # same keys and shapes
        assert not torch.allclose(other(x, t), ref), change


def test_norm_eps_reaches_every_groupnorm():
    model = UNet(preset("tiny", norm_eps=1e-5))
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert eps == {1e-5}


def test_bottom_right_downsampling_is_tensorflow_same_padding():
    """Output pixel i of the stride-2 conv sees input pixels 2i..2i+2 (zero beyond the bottom/right edge) instead of
    2i-1..2i+1: with a summing 3x3 kernel on a ramp the two paddings give these sums exactly."""
    from ddpm.model.unet import Downsample
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = {}
    for padding in ("symmetric", "bottom-right"):
        d = Downsample(1, padding)
        with torch.no_grad():
            d.conv.weight.fill_(1.0)
            d.conv.bias.zero_()
        out[padding] = d(x)[0, 0]
    def window(i, j, first):  # the sum of the input pixels rows/cols first..first+2 from (2i, 2j), zero outside
        rows, cols = range(2 * i + first, 2 * i + first + 3), range(2 * j + first, 2 * j + first + 3)
        return sum(x[0, 0, r, c].item() for r in rows for c in cols if 0 <= r < 4 and 0 <= c < 4)
    for i in range(2):
        for j in range(2):
            assert out["symmetric"][i, j].item() == window(i, j, -1)
            assert out["bottom-right"][i, j].item() == window(i, j, 0)


def test_timestep_embedding_order_and_shift():
    t = torch.tensor([0, 5, 999])
    e = timestep_embedding(t, 8, order="cos-sin", freq_shift=0.0)
    freqs = 10000.0 ** (-torch.arange(4) / 4)  # shift 0: w_j = P^(-j / h)
    torch.testing.assert_close(e[:, :4], torch.cos(t[:, None].float() * freqs))
    torch.testing.assert_close(e[:, 4:], torch.sin(t[:, None].float() * freqs))
    with pytest.raises(ValueError, match="order"):
        timestep_embedding(t, 8, order="cos")


def test_head_channels_sets_the_heads_per_layer():
    cfg = UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                     dropout=0.0, image_size=8, num_groups=4, head_channels=4)
    model = UNet(cfg)
    heads = {m.norm.num_channels: m.num_heads for m in model.modules() if type(m).__name__ == "AttentionBlock"}
    assert heads == {8: 2, 16: 4}
    with pytest.raises(ValueError, match="head_channels 3 must divide"):
        UNetConfig(**{**cfg.to_dict(), "head_channels": 3})


@pytest.mark.parametrize("field, value", [("norm_eps", 0.0), ("downsample_padding", "same"),
                                          ("time_embedding_order", "sin"), ("head_channels", 0)])
def test_bad_switch_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        preset("tiny", **{field: value})
