"""Watching a run: the loggers (TensorBoard, offline W&B), quality measured while training, checkpoints/best and
``--checkpoint``.  Tiny runs: the tiny U-Net at 8x8, T = 20."""
import json
import shutil

import pytest
from conftest import TINY

from ddpm.cli.main import main
from ddpm.runs.checkpoint import CheckpointError, resolve_checkpoint
from ddpm.runs.rundir import read_metrics
from ddpm.sampling.generate import load_run

# the embedded digits (the quality yardstick's data) at the tiny network's 8x8
DIGITS8 = [a if a != "sklearn-digits" else "digits" for a in TINY]


def _events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A run of 4 steps logged to TensorBoard, measured at steps 2 and 4 on 8 samples, previews at 2 and 4."""
    run = tmp_path_factory.mktemp("watched") / "run"
    assert main(["train", *DIGITS8, "--run-dir", str(run), "--steps", "4", "--logger", "tensorboard",
                 "--eval-every", "2", "--eval-samples", "8", "--sample-every", "2", "--checkpoint-every", "4"]) == 0
    return run


def test_tensorboard_holds_the_loss_an_eval_scalar_the_previews_and_the_config(watched):
    ea = _events(watched)
    tags = ea.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/img_per_s", "train/ema_decay", "eval/fd",
            "eval/kid", "eval/seconds"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4]
    # the logged loss is the metrics row's (float32 in the event file: rel 1e-6)
    rows = read_metrics(watched / "metrics.jsonl")
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.step for e in ea.Scalars("eval/fd")] == [2, 4]
    assert [e.step for e in ea.Images("previews")] == [2, 4]
    assert any(t.startswith("config") for t in tags["tensors"])


def test_eval_rows_record_how_they_were_measured_and_best_names_the_lowest_fd(watched):
    rows = read_metrics(watched / "eval.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["n"] == 8 and r["seed"] == 1 and r["extractor"].startswith("digit classifier")
        assert len(r["weights_sha256"]) == 64 and r["sampling"]["sampler"] and r["seconds"] > 0
        assert r["fd"] >= 0 and "kid" in r
    best_step = min(rows, key=lambda r: (r["fd"], r["step"]))["step"]  # ties keep the earlier one
    best = (watched / "checkpoints" / "best").read_text().strip()
    assert best == f"step_{best_step:07d}"
    assert load_run(watched / "checkpoints" / "best", device="cpu").checkpoint.name == best
    assert resolve_checkpoint(watched, "best").name == best
    assert resolve_checkpoint(watched, "4").name == "step_0000004" == resolve_checkpoint(watched, "latest").name
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(watched, "step_0000003")
    # the reference features are computed once and cached in the run folder
    assert len(list((watched / "eval").glob("reference_digits_test_*.safetensors"))) == 1


def test_checkpoint_flag_on_sample(watched, tmp_path, capsys):
    assert main(["sample", str(watched), "--checkpoint", "best", "-n", "2", "--out", str(tmp_path / "s"),
                 "--no-progress", "--no-individual"]) == 0
    best = (watched / "checkpoints" / "best").read_text().strip()
    assert best in capsys.readouterr().out
    assert main(["sample", str(watched), "--checkpoint", "nope", "-n", "2", "--out", str(tmp_path / "t"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoint nope" in err


def test_best_is_kept_out_of_the_rotation(tmp_path):
    """keep 1: the newest checkpoint stays, and so does the one checkpoints/best names."""
    from ddpm.runs.checkpoint import mark_best
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run), "--steps", "3", "--checkpoint-every", "1",
                 "--keep-checkpoints", "1"]) == 0
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == ["step_0000003"]
    mark_best(run, 3, keep=1)
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000003", "step_0000005"]


def test_a_resumed_run_logs_no_step_twice(tmp_path):
    """Steps logged after the checkpoint a run resumes from are purged from the TensorBoard run (purge_step)."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run), "--steps", "4", "--checkpoint-every", "2",
                 "--logger", "tensorboard"]) == 0
    shutil.rmtree(run / "checkpoints" / "step_0000004")  # as if it died after logging steps 3 and 4
    (run / "checkpoints" / "latest").write_text("step_0000002\n")
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    steps = [e.step for e in _events(run).Scalars("train/loss")]
    assert steps == [1, 2, 3, 4, 5]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_offline_wandb_writes_its_folder_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run-dir", str(run), "--steps", "1", "--logger", "wandb"]) == 0
    run_id = json.loads((run / "wandb.json").read_text())["id"]
    assert main(["train", "--resume", str(run), "--steps", "2", "--no-progress"]) == 0
    runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(run_id) for name in runs)


def test_a_missing_logger_or_bad_name_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "a"), "--steps", "1", "--logger", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'ddpm[wandb]'" in err
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "b"), "--steps", "1", "--logger", "mlflow"]) == 2
    assert "not one of tensorboard, wandb" in capsys.readouterr().err
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "b"), "--steps", "1", "--eval-samples", "4"]) == 2
    assert "add --eval-every N" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_eval_on_other_data_without_torch_fidelity_is_refused_at_start(tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed here")
    except Exception:
        pass
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "r"), "--steps", "1", "--eval-every", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--eval-every" in err and "ddpm[fid]" in err
    assert not (tmp_path / "r").exists()


def test_the_in_training_fd_equals_eval_quality_at_the_same_n_and_seeds(watched, tmp_path, capsys):
    """The last row measures the EMA weights the last checkpoint holds, with ddpm eval quality's sampling, seeds
    and reference: the same FD and KID (rel 1e-6: the same arithmetic, batches of other sizes)."""
    last = read_metrics(watched / "eval.jsonl")[-1]
    assert main(["eval", "quality", str(watched), "--checkpoint", "latest", "-n", "8", "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert report["fd"] == pytest.approx(last["fd"], rel=1e-6)
    assert report["kid_mean"] == pytest.approx(last["kid"], rel=1e-6)
