"""The run configuration (runs/config.py): validation, saved JSON, and the presets' recipes."""

import pytest


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("ema_decay", 1.5), ("grad_clip", 0.0), ("warmup_steps", -1),
                                          ("weight_decay", -0.1), ("keep_checkpoints", 0)])
def test_train_config_refuses_out_of_range_settings(field, value):
    from ddpm.runs.config import TrainConfig
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_misspelt_setting_in_a_saved_config_is_named():
    import warnings

    from ddpm.runs.config import TrainConfig
    saved = {**TrainConfig().to_dict(), "distributed": {"world_size": 1}}  # as config.json holds it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainConfig.from_dict(saved) == TrainConfig()
    with pytest.warns(UserWarning, match="config: ignoring unknown setting lr_shedule"):
        TrainConfig.from_dict({**saved, "lr_shedule": "cosine"})
    with pytest.warns(UserWarning, match="model: ignoring unknown setting dropuot"):
        TrainConfig.from_dict({**saved, "model": {**saved["model"], "dropuot": 0.1}})


def test_digits_recipe_decays_the_rate_and_flags_override_it():
    from ddpm.cli.main import build_parser
    from ddpm.cli.train import config_from_args
    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert (cfg.steps, cfg.lr, cfg.lr_schedule) == (3000, 1e-3, "cosine")
    cfg = config_from_args(build_parser().parse_args(["train", "--lr-schedule", "constant"]))
    assert cfg.lr_schedule == "constant"
    assert config_from_args(build_parser().parse_args(["train", "--preset", "cifar10"])).lr_schedule == "constant"


@pytest.mark.parametrize("preset_name", ["digits", "digits-fast", "cifar10"])
def test_the_python_default_of_a_preset_is_what_ddpm_train_builds(preset_name):
    """One source of truth: ``TrainConfig.for_preset(NAME)`` and ``ddpm train --preset NAME`` with no other flag
    train the same run (the CLI adds only its own run folder and progress setting)."""
    from ddpm.cli.main import build_parser
    from ddpm.cli.train import config_from_args
    from ddpm.runs.config import TrainConfig

    cli = config_from_args(build_parser().parse_args(["train", "--preset", preset_name]))
    lib = TrainConfig.for_preset(preset_name, run_dir=cli.run_dir)
    assert cli.to_dict() == lib.to_dict()
    assert TrainConfig.for_preset("digits").lr != TrainConfig().lr   # the recipe is not the paper's default


def test_help_defaults_come_from_the_library(capsys):
    """``ddpm train --help`` states the defaults the library holds, recipe values included."""
    from ddpm.cli.main import main
    from ddpm.runs.config import PRESET_RECIPES, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (f"{PRESET_RECIPES['digits']['steps']} for the digits preset, {PRESET_RECIPES['digits-fast']['steps']} for "
            f"the digits-fast preset, else {TrainConfig().steps}") in out
    gamma = PRESET_RECIPES['digits-fast']['min_snr_gamma']
    assert f"(default: {gamma:g} for the digits-fast preset, else unweighted)" in out
    assert f"EMA decay (default: {TrainConfig().ema_decay:g}" in out


def test_the_fast_digits_preset_trains_at_28_pixels_with_min_snr_and_turns_it_off_with_0():
    from ddpm.cli.main import build_parser
    from ddpm.cli.train import config_from_args

    fast = config_from_args(build_parser().parse_args(["train", "--preset", "digits-fast"]))
    assert (fast.data.image_size, fast.model.image_size, fast.min_snr_gamma) == (28, 28, 5.0)
    off = config_from_args(build_parser().parse_args(["train", "--preset", "digits-fast", "--min-snr-gamma", "0"]))
    assert off.min_snr_gamma is None and off.batch_size == fast.batch_size
