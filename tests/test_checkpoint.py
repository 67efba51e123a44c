"""Checkpoints (runs/checkpoint.py): atomic saves, loading without unpickling code, which checkpoint is the latest."""
import pytest
import torch

from ddpm.model.unet import UNet, preset
from ddpm.runs.checkpoint import (
    CheckpointError,
    check_finite,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    non_finite,
    save_checkpoint,
)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model=model, ema=model, trainer_state={"step": 1}, config={"a": 1})
    import ddpm.runs.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, model=model, ema=model, trainer_state={"step": 2}, config={"a": 1})
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")] == []
    assert load_checkpoint(tmp_path)["trainer"]["step"] == 1


def test_loading_never_unpickles_code(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(tmp_path, 1, model=model, ema=model, trainer_state={"step": 1}, config={})
    torch.save({"step": 1, "payload": _Evil()}, path / "trainer.pt")
    with pytest.raises(CheckpointError, match="trainer.pt"):
        load_checkpoint(tmp_path)
    (path / "ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, with_trainer_state=False)


def test_latest_is_the_newest_complete_checkpoint_by_step_number(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in (9_999_999, 10_000_000):  # 8 digits sort before 7 by name, not by number
        save_checkpoint(tmp_path, step, model=model, ema=model, trainer_state={"step": step}, config={}, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == ["step_10000000"]
    root = tmp_path / "checkpoints"
    (root / "step_20000000").mkdir()            # a folder without its files is not a checkpoint
    (root / "latest").write_text("step_0000001\n")  # nor does a stale pointer matter
    assert latest_checkpoint(tmp_path).name == "step_10000000"
    save_checkpoint(tmp_path, 10_000_000, model=model, ema=model, trainer_state={"step": 7}, config={"again": 1})
    assert load_checkpoint(tmp_path)["config"] == {"again": 1}  # saving a step again replaces it
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_non_finite_names_the_first_bad_tensor_and_counts():
    state = {"a": torch.ones(3), "steps": torch.tensor([1, 2]), "b": torch.tensor([1.0, float("nan"), float("inf")]),
             "c": torch.tensor([float("nan")])}
    assert non_finite(state) == "b holds NaN and Inf (2 of 3 values)"
    assert non_finite({"a": torch.ones(2)}) is None
    with pytest.raises(CheckpointError,
                       match=r"^f\.safetensors: b holds NaN and Inf .* diverged run or a damaged file"):
        check_finite(state, "f.safetensors")


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
