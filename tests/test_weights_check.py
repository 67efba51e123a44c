"""Weights are checked when they are read: a NaN or an infinity in a checkpoint (a diverged run, a damaged file) is
refused with one line naming the file and the first bad tensor, exit status 2, by every command that reads weights.
(tests/test_checkpoint.py: the check itself, and that a diverged run writes no such checkpoint.)"""
import pytest
from conftest import TINY
from safetensors.torch import load_file, save_file

from ddpm.cli.main import main
from ddpm.runs.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    latest_checkpoint,
)
from ddpm.sampling.generate import load_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("finite") / "run"
    assert main(["train", *TINY, "--run-dir", str(run), "--steps", "2", "--checkpoint-every", "1"]) == 0
    return run


def _poison(ckpt, which: str, key: str, value: float) -> str:
    f = ckpt / f"{which}.safetensors"
    state = load_file(str(f))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    save_file(state, str(f))
    return key


def _copy(run, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    (out / ".lock").unlink(missing_ok=True)
    return out


@pytest.mark.parametrize("command", [["sample", "RUN", "-n", "2"], ["eval", "nll", "RUN", "-n", "2", "--quick", "3"],
                                     ["study", "noise", "RUN", "-n", "2", "--no-quality"],
                                     ["eval", "quality", "RUN", "-n", "2"]])
def test_every_command_refuses_nan_weights_in_one_line(trained, tmp_path, capsys, command):
    run = _copy(trained, tmp_path)
    key = _poison(latest_checkpoint(run), "ema", "conv_in.weight", float("nan"))
    assert main([str(run) if a == "RUN" else a for a in command] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ema.safetensors" in err and f"{key} holds NaN (1 of" in err
    assert "older" in err  # and it points at the checkpoint before, which is intact
    assert not (run / "samples").exists()


def test_load_run_names_the_file_and_an_intact_older_checkpoint(trained, tmp_path):
    run = _copy(trained, tmp_path)
    newest, older = complete_checkpoints(run)[:2]
    _poison(newest, "model", "down.0.0.res.conv1.bias", float("inf"))
    for which in ("model", "ema"):  # a checkpoint is one thing: half of it damaged condemns it all
        with pytest.raises(CheckpointError, match=rf"model\.safetensors: down\.0\.0\.res\.conv1\.bias holds Inf "
                                                  rf".* the older {older} may be intact"):
            load_run(run, which=which)
    assert load_run(older, which="model").checkpoint == older


def test_resume_says_what_is_wrong_with_the_checkpoint(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    for ckpt in complete_checkpoints(run):  # every checkpoint diverged: nothing to fall back on
        _poison(ckpt, "model", "conv_out.weight", float("nan"))
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.safetensors: conv_out.weight holds NaN" in err and "--lr" not in err


def test_resume_falls_back_past_a_diverged_checkpoint(trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    newest, older = complete_checkpoints(run)[:2]
    _poison(newest, "ema", "conv_out.bias", float("nan"))
    with pytest.warns(UserWarning, match=rf"conv_out\.bias holds NaN.*using the older {older}"):
        assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    assert latest_checkpoint(run).name == "step_0000003"
