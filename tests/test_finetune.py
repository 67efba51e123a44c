"""Starting a run from another run's weights (training/finetune.py, ``ddpm train --init-from``): the model and its EMA
start at the source's EMA weights, the network, schedule and variance are the source's, and flags that would change
the network are one-line errors.  (tests/test_diffusers_io.py starts one from an imported run.)"""
import json

import pytest
import torch

from ddpm.cli.main import main
from ddpm.data.datasets import DataConfig
from ddpm.model.unet import UNetConfig
from ddpm.runs.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from ddpm.runs.config import TrainConfig
from ddpm.sampling.generate import load_run
from ddpm.training.finetune import source_config
from ddpm.training.trainer import Trainer

DATA = ["--data", "sklearn-digits", "--batch-size", "4", "--log-every", "1", "--no-progress"]


def test_model_and_ema_start_at_the_source_ema_weights(tiny_run, tmp_path):
    source = load_run(tiny_run)
    cfg = TrainConfig(run_dir=str(tmp_path / "ft"), model=source.config.model, schedule=source.config.schedule,
                      data=DataConfig(source="sklearn-digits", image_size=8), init_from=str(tiny_run), batch_size=4,
                      steps=1, progress=False)
    trainer = Trainer(cfg)
    ema = load_checkpoint(tiny_run)["ema"]
    assert not all(torch.equal(ema[k], v) for k, v in load_checkpoint(tiny_run)["model"].items())  # they differ
    for module in (trainer.model, trainer.ema):
        assert all(torch.equal(v, ema[k]) for k, v in module.state_dict().items())
    assert trainer.step == 0
    trainer.close()


def test_weights_that_do_not_fit_are_one_line(tiny_run, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "ft"), data=DataConfig(source="sklearn-digits", image_size=8),
                      model=UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 1), attention_resolutions=(4,),
                                       image_size=8, num_groups=2, dropout=0.0),
                      init_from=str(tiny_run), batch_size=4, steps=1, progress=False)
    with pytest.raises(CheckpointError, match=r"^init_from .*: its weights do not fit this run's network \("):
        Trainer(cfg)


def test_cli_takes_the_network_schedule_and_variance_of_the_source(tiny_run, tmp_path, capsys):
    run = tmp_path / "ft"
    assert main(["train", "--init-from", str(tiny_run), *DATA, "--steps", "2", "--run-dir", str(run),
                 "--dropout", "0.1"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    source_ckpt, source = source_config(tiny_run)
    assert cfg["init_from"] == str(source_ckpt.resolve()) and source_ckpt == latest_checkpoint(tiny_run)
    assert {**cfg["model"], "dropout": 0.0} == source.model.to_dict() and cfg["model"]["dropout"] == 0.1
    assert cfg["schedule"] == source.schedule.to_dict() and cfg["variance"] == source.variance
    assert (cfg["lr"], cfg["lr_schedule"], cfg["data"]["image_size"]) == (2e-4, "constant", 8)  # the paper's recipe
    capsys.readouterr()
    for flags, expected in ((["--preset", "tiny"], "--preset: --init-from takes the network of"),
                            (["--base-channels", "8"], "--base-channels: --init-from takes the network"),
                            (["--image-size", "16"], "--image-size 16: the network of"),
                            (["--variance", "learned-range", "--loss", "hybrid"],
                             "--variance learned-range: the network"),
                            (["--channels", "3"], "--channels 3: the network of")):
        assert main(["train", "--init-from", str(tiny_run), *DATA, "--run-dir", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err, err
    assert not (tmp_path / "x").exists()
    assert main(["train", "--init-from", str(tmp_path / "none"), "--run-dir", str(tmp_path / "y")]) == 2
    assert "no such run or checkpoint folder" in capsys.readouterr().err
    # --resume continues a run from its own checkpoint; --init-from starts a new one
    assert main(["train", "--resume", str(run), "--init-from", str(tiny_run)]) == 2
    assert "--init-from" in capsys.readouterr().err
