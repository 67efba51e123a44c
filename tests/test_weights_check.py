"""Weights are checked when they are written and when they are read: a NaN or an infinity in a checkpoint (a
diverged run, a damaged file) is refused with one line naming the file and the first bad tensor, exit status 2,
by every command that reads weights, and a diverged run writes no such checkpoint in the first place."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm.cli.main import main
from ddpm.model.unet import UNet, preset
from ddpm.runs.checkpoint import (
    CheckpointError,
    check_finite,
    complete_checkpoints,
    latest_checkpoint,
    non_finite,
    save_checkpoint,
)
from ddpm.sampling.generate import load_run

TINY = ["--preset", "tiny", "--data", "sklearn-digits", "--image-size", "8", "--timesteps", "20",
        "--batch-size", "8", "--log-every", "1", "--no-progress", "--sample-every", "100"]


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


def test_non_finite_names_the_first_bad_tensor_and_counts():
    state = {"a": torch.ones(3), "steps": torch.tensor([1, 2]), "b": torch.tensor([1.0, float("nan"), float("inf")]),
             "c": torch.tensor([float("nan")])}
    assert non_finite(state) == "b holds NaN and Inf (2 of 3 values)"
    assert non_finite({"a": torch.ones(2)}) is None
    with pytest.raises(CheckpointError, match=r"^f\.safetensors: b holds NaN and Inf .* diverged run or a damaged file"):
        check_finite(state, "f.safetensors")


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


def test_a_diverged_model_writes_no_checkpoint(tmp_path):
    model, ema = UNet(preset("tiny")), UNet(preset("tiny"))
    save_checkpoint(tmp_path, 1, model=model, ema=ema, trainer_state={"step": 1}, config={})
    with torch.no_grad():
        model.conv_in.bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"step 2: the model weights diverged \(conv_in\.bias holds Inf"):
        save_checkpoint(tmp_path, 2, model=model, ema=ema, trainer_state={"step": 2}, config={})
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_0000001"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000001"
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
