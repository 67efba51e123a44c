"""The trainer, checkpoints and the CLI end to end, on a tiny model and scikit-learn's 8x8 digits."""
import importlib
import json
import math

import pytest
import torch
from conftest import TINY

from ddpm.cli.main import main
from ddpm.runs.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
)
from ddpm.runs.rundir import read_metrics
from ddpm.training.rates import ema_decay_at, lr_at


def _train(run_dir, steps, *extra):
    return main(["train", *TINY, "--run-dir", str(run_dir), "--steps", str(steps), *extra])


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")  # bf16 on purpose
def test_cli_train_then_sample_writes_every_artefact(tmp_path):
    run = tmp_path / "run"
    assert _train(run, 6, "--sample-every", "3", "--checkpoint-every", "2", "--keep-checkpoints", "2") == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["base_channels"] == 4 and cfg["schedule"]["num_timesteps"] == 20
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"step", "loss", "lr", "grad_norm", "img_per_s"} for r in rows)
    assert (run / "loss.png").is_file()
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert kept == ["step_0000004", "step_0000006"]  # the last K = 2
    assert latest_checkpoint(run).name == "step_0000006"

    out = tmp_path / "samples"
    assert main(["sample", str(run), "-n", "5", "--batch-size", "2", "--chain", "2", "--out", str(out),
                 "--no-progress"]) == 0
    import numpy as np
    arr = np.load(out / "samples.npz")["images"]
    assert arr.shape == (5, 8, 8, 1) and arr.dtype == np.uint8
    assert len(list((out / "images").glob("*.png"))) == 5
    assert (out / "grid.png").is_file() and (out / "chain.png").is_file() and (out / "chain.gif").is_file()
    # each sample has its own seed: drawing with another batch size gives the same images
    out2 = tmp_path / "samples2"
    assert main(["sample", str(run), "-n", "5", "--batch-size", "5", "--out", str(out2), "--no-progress",
                 "--no-individual"]) == 0
    assert (np.load(out2 / "samples.npz")["images"] == arr).all()
    # another base seed draws other images; bf16 on the CPU runs and writes the same artefacts
    out3 = tmp_path / "samples3"
    assert main(["sample", str(run), "-n", "5", "--seed", "1", "--precision", "bf16", "--out", str(out3),
                 "--no-progress", "--no-individual"]) == 0
    assert not (np.load(out3 / "samples.npz")["images"] == arr).all()
    # sampling again into the first folder replaces that call's files instead of mixing with them
    (out / "notes.txt").write_text("mine")
    assert main(["sample", str(run), "-n", "2", "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 2 and len(np.load(out / "samples.npz")["images"]) == 2
    assert not (out / "chain.png").exists() and (out / "notes.txt").read_text() == "mine"


def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Stop at step 4, resume to 8: losses and weights equal the run that never stopped (same CPU, same seed)."""
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--checkpoint-every", "4", "--sample-every", "100", "--dropout", "0.1"]
    assert _train(full, 8, *common) == 0
    assert _train(part, 4, *common) == 0
    assert main(["train", "--resume", str(part), "--steps", "8", "--no-progress"]) == 0
    a = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(part / "metrics.jsonl")]
    assert len(a) == len(b) == 8
    assert a == b
    ca, cb = load_checkpoint(full), load_checkpoint(part)
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
        assert torch.equal(ca["ema"][key], cb["ema"][key]), key


def test_refuses_to_overwrite_a_run_and_resume_needs_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 2) == 0
    assert _train(run, 2) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def test_python_api_refuses_to_start_over_a_run(tmp_path):
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import train
    run = tmp_path / "run"
    assert _train(run, 2, "--checkpoint-every", "2") == 0
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(config)
    assert latest_checkpoint(run).name == "step_0000002"


def test_fresh_start_drops_the_rows_and_previews_of_a_run_that_died_before_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "previews").mkdir(parents=True)
    (run / "previews" / "step_0000001.png").write_bytes(b"stale")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 123.0, "lr": 1e30}) + "\n")
    assert _train(run, 2, "--sample-every", "100") == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] != 123.0 for r in rows)
    assert not (run / "previews" / "step_0000001.png").exists()


def test_diverged_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 4, "--lr", "1e30", "--checkpoint-every", "1", "--sample-every", "100") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: loss became") and "lower --lr" in err and len(err.splitlines()) == 1
    assert latest_checkpoint(run).name == "step_0000001"


def test_checkpoint_from_incompatible_config_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 2, "--checkpoint-every", "2") == 0
    ckpt = latest_checkpoint(run)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["base_channels"] = 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert main(["sample", str(run), "-n", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "do not fit" in err and "Traceback" not in err
    assert "size mismatch for" in err and len(err.strip().splitlines()) == 1  # names what differs



def test_schedules_of_lr_and_ema():
    assert lr_at(0, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(9, 1e-3, 10) == pytest.approx(1e-3) and lr_at(500, 1e-3, 10) == 1e-3
    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1)
    # cosine: peak right after warm-up, half way down at the midpoint of the rest, 0 at the last step
    assert lr_at(10, 1e-3, 10, "cosine", 110) == pytest.approx(1e-3)
    assert lr_at(60, 1e-3, 10, "cosine", 110) == pytest.approx(0.5e-3)
    assert lr_at(35, 1e-3, 10, "cosine", 110) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(110, 1e-3, 10, "cosine", 110) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(3, 1e-3, 10, "cosine", 110) == lr_at(3, 1e-3, 10)
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(20, 1e-3, 10, "cosine")
    assert ema_decay_at(10**7, 0.9999) == 0.9999


def test_cli_cosine_schedule_reaches_the_optimizer(tmp_path):
    assert _train(tmp_path / "run", 4, "--lr-schedule", "cosine", "--warmup-steps", "0", "--lr", "1e-3") == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr_schedule"] == "cosine"
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert lrs == pytest.approx([lr_at(i, 1e-3, 0, "cosine", 4) for i in range(4)])
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[-2] < lrs[0]



def _tiny_trainer(tmp_path, steps=2, **kw):
    """A Trainer of the tiny preset on scikit-learn's 8x8 digits, batch 8."""
    from ddpm.data.datasets import DataConfig
    from ddpm.model.unet import preset
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import Trainer
    cfg = TrainConfig(run_dir=str(tmp_path), model=preset("tiny"), data=DataConfig(source="sklearn-digits",
                      image_size=8), batch_size=8, steps=steps, progress=False, **kw)
    return Trainer(cfg)


def test_ema_tracks_weights(tmp_path):
    """With decay d_n = (1+n)/(10+n), d_0 = 0.1: after one step the EMA is 0.1 * init + 0.9 * new weights."""
    tr = _tiny_trainer(tmp_path, steps=1)
    init = [p.detach().clone() for p in tr.model.parameters()]
    tr.train_step()
    for e, p, p0 in zip(tr.ema.parameters(), tr.model.parameters(), init):
        assert torch.allclose(e, 0.1 * p0 + 0.9 * p.detach(), atol=1e-9)
    assert any(not torch.equal(p0, p) for p0, p in zip(init, tr.model.parameters()))  # the step moved something


def test_preset_that_cannot_take_the_image_size_is_refused_with_a_hint(tmp_path, capsys):
    # the tiny preset attends at 4x4, which a 2-level network on 32x32 digits never reaches
    rc = main(["train", "--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "made for 8x8 images does not fit 32x32 data" in err and "choose another image size" in err
    assert not (tmp_path / "run").exists()


def test_network_shape_flags_override_the_preset_at_the_data_size(tmp_path, capsys):
    from ddpm.cli.main import build_parser
    from ddpm.cli.train import config_from_args
    from ddpm.model.unet import preset
    args = ["train", "--preset", "tiny", "--attention-resolutions", "8", "--base-channels", "8",
            "--channel-mult", "1,2,2", "--num-res-blocks", "2"]
    cfg = config_from_args(build_parser().parse_args(args))
    m = cfg.model
    assert (m.image_size, m.base_channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions) == \
        (32, 8, (1, 2, 2), 2, (8,))
    assert m.num_groups == preset("tiny").num_groups  # what no flag names stays the preset's
    # a size the network never reaches is refused before anything is written, naming the sizes it has
    rc = main(["train", "--attention-resolutions", "5", "--run-dir", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "--attention-resolutions [5]" in err and "(32, 16, 8, 4)" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--channel-mult", "1,two"])


def test_every_train_example_in_the_help_builds_a_config():
    """The --help examples are commands people copy: each must at least parse and build its TrainConfig."""
    import shlex

    from ddpm.cli.main import build_parser
    from ddpm.cli.train import TRAIN_EXAMPLES, config_from_args
    lines = [ln.split("#")[0].strip() for ln in TRAIN_EXAMPLES.splitlines()]
    # (--resume and --init-from need a run to read: tests/test_diffusers_cli.py builds the --init-from example's)
    commands = [ln for ln in lines if ln.startswith("ddpm train") and "--resume" not in ln and "--init-from" not in ln]
    assert len(commands) >= 4
    for line in commands:
        config_from_args(build_parser().parse_args(shlex.split(line)[1:]))


def test_auto_compile_falls_back_to_eager_when_the_first_step_fails(tmp_path, monkeypatch):
    """compile=auto means "where it works": a compiler failure on the first step trains eagerly, with a warning;
    compile=on keeps the failure."""
    train_mod = importlib.import_module("ddpm.training.trainer")  # the package exports a function of that name
    calls = []

    def broken_compile(module):
        def f(*args):  # a forward that runs, and a backward that does not (compiled lazily in real life)
            calls.append(1)
            out = module(*args)
            return out + out.detach() * 0 + _BrokenBackward.apply(out)
        return f

    class _BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.zeros_like(x)

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("no working compiler here")

    monkeypatch.setattr(train_mod, "auto_compile", lambda device: True)
    monkeypatch.setattr(torch, "compile", broken_compile)
    tr = _tiny_trainer(tmp_path / "auto")
    with pytest.warns(RuntimeWarning, match="torch.compile failed on the first step"):
        loss, _ = tr.train_step()
    assert torch.isfinite(loss) and tr.step == 1 and len(calls) == 1
    tr.train_step()  # eager from now on: the broken compiled function is not called again
    assert len(calls) == 1 and tr.step == 2
    tr_on = _tiny_trainer(tmp_path / "on", compile="on")
    with pytest.raises(RuntimeError, match="no working compiler"):
        tr_on.train_step()


def test_auto_compile_only_on_cuda():
    from ddpm.runtime.precision import auto_compile
    assert not auto_compile(torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, native):
    import warnings

    import ddpm.runtime.precision as train_mod
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: native)
    train_mod._warn_emulated_bf16.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # asked at every step, said once
            assert train_mod.autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
        assert train_mod.autocast_dtype(torch.device("cpu"), "auto") is None  # auto never picks bf16 on a CPU
    assert [("--precision fp32" in str(w.message)) for w in caught] == ([] if native else [True])


def test_algorithm_1_draws_every_timestep_uniformly():
    """Line 3: t ~ Uniform{1..T}, i.e. the 0-based indices 0..T-1 and nothing else (5 binomial SE per index)."""
    from ddpm.core.diffusion import sample_timesteps
    T, n = 7, 70_000
    t = sample_timesteps(n, T, torch.Generator().manual_seed(0))
    assert int(t.min()) == 0 and int(t.max()) == T - 1
    freq = torch.bincount(t, minlength=T).double() / n
    assert (freq - 1 / T).abs().max().item() < 5 * math.sqrt((1 / T) * (1 - 1 / T) / n)


def test_algorithm_1_step_pairs_the_network_input_with_its_own_t_and_eps(tmp_path):
    """Lines 4-5: the network sees x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the t it is told, and the loss
    is the MSE against that eps.  eps is recovered here from the recorded (x_t, t) with abar from the betas."""
    tr = _tiny_trainer(tmp_path)
    seen = {}

    def recorder(x_t, t, y=None):
        seen["x_t"], seen["t"] = x_t.detach().clone(), t.clone()
        return torch.full_like(x_t, 0.3)
    tr._network = recorder
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    loss = tr._loss(x0)
    abar = torch.cumprod(1 - tr.schedule.betas, 0)[seen["t"]].view(-1, 1, 1, 1).float()
    eps = (seen["x_t"] - abar.sqrt() * x0) / (1 - abar).sqrt()
    assert loss.item() == pytest.approx(((0.3 - eps) ** 2).mean().item(), rel=1e-4)
    # and that eps is standard normal noise (4096 values: mean within 5 SE, variance within 15%)
    assert abs(eps.mean().item()) < 5 / 64 and 0.85 < eps.var().item() < 1.15



def test_resume_falls_back_past_a_corrupt_checkpoint_and_tidies_the_folder(tmp_path):
    run = tmp_path / "run"
    assert _train(run, 4, "--checkpoint-every", "2", "--sample-every", "100") == 0
    (run / "checkpoints" / "step_0000004" / "model.safetensors").write_bytes(b"truncated")
    (run / "checkpoints" / ".tmp_step_0000006_x").mkdir()      # a save killed midway
    with pytest.warns(UserWarning, match="using the older .*step_0000002"):
        assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]          # steps 3-4 were redone, not logged twice
    assert latest_checkpoint(run).name == "step_0000005" and load_checkpoint(run)["trainer"]["step"] == 5
    assert not (run / "checkpoints" / ".tmp_step_0000006_x").exists()


def test_a_trainer_state_without_its_keys_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 2, "--checkpoint-every", "2") == 0
    torch.save({"step": 2}, run / "checkpoints" / "step_0000002" / "trainer.pt")
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trainer.pt: no optimizer, data" in err and len(err.splitlines()) == 1


def test_a_failed_write_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _train(blocker / "run", 1) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {blocker}") and "Not a directory" in err and len(err.splitlines()) == 1


def test_resume_takes_only_its_own_flags_and_a_larger_step_count(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, 2, "--checkpoint-every", "2", "--lr-schedule", "cosine") == 0
    assert main(["train", "--resume", str(run), "--steps", "4", "--lr", "5", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size, --lr: --resume continues" in err and len(err.splitlines()) == 1
    assert main(["train", "--resume", str(run), "--steps", "2"]) == 2
    assert "already at step 2" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "3", "--no-progress"]) == 0
    assert "cosine learning-rate schedule now ends at step 3 instead of 2" in capsys.readouterr().err


def test_a_relative_data_path_is_saved_absolute_and_outputs_must_be_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np_images = torch.randint(0, 256, (16, 8, 8), dtype=torch.uint8).numpy()
    import numpy as np
    np.save(tmp_path / "mine.npy", np_images)
    assert main(["train", "--preset", "tiny", "--data", "mine.npy", "--image-size", "8", "--batch-size", "8",
                 "--steps", "1", "--run-dir", "run", "--no-progress", "--timesteps", "20"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["source"] == str(tmp_path / "mine.npy")
    np.save(tmp_path / "rgb.npy", torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8).numpy())
    assert main(["train", "--preset", "tiny", "--data", "rgb.npy", "--image-size", "8", "--batch-size", "8",
                 "--steps", "1", "--run-dir", "rgb", "--no-progress", "--timesteps", "20"]) == 0
    cfg = json.loads((tmp_path / "rgb" / "config.json").read_text())
    assert cfg["data"]["channels"] == 3 and cfg["model"]["in_channels"] == 3  # colour data trains in colour
    (tmp_path / "afile").write_text("x")
    for argv in (["sample", "run", "--out", "afile"], ["eval", "nll", "run", "--out", "afile"],
                 ["train", "--run-dir", "afile"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "afile: is a file; pass a folder" in err and len(err.splitlines()) == 1


def test_a_second_training_in_a_busy_run_folder_is_refused(tmp_path, capsys):
    """A resume started while the run still trains would interleave metrics and checkpoints: refused, and the
    folder is free again once the first training ends (or its process dies: the lock is the process's)."""
    import subprocess
    import sys
    import textwrap
    pytest.importorskip("fcntl")
    run_dir = tmp_path / "run"
    assert _train(run_dir, 2) == 0
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        f = open({str(run_dir / '.lock')!r}, "a+")
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["train", "--resume", str(run_dir), "--steps", "4"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"another training is running in this folder (pid {holder.pid})" in err and len(err.splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    rows_before = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows_before] == [1, 2]  # the refused resume touched nothing
    assert main(["train", "--resume", str(run_dir), "--steps", "4"]) == 0  # the holder is gone, and its lock
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_trainer_that_fails_to_start_leaves_the_folder_free(tmp_path, monkeypatch):
    from ddpm.data.datasets import DataError
    from ddpm.runs.config import TrainConfig
    from ddpm.training.trainer import Trainer
    run = tmp_path / "run"
    assert _train(run, 2) == 0
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    with pytest.raises(DataError):  # refused before the lock
        Trainer(TrainConfig.from_dict({**cfg.to_dict(), "batch_size": 100000}), resume=True)
    other = {**cfg.to_dict()["model"], "base_channels": 8}
    with pytest.raises(CheckpointError, match="saved model config differs"):  # refused while holding it
        Trainer(TrainConfig.from_dict({**cfg.to_dict(), "model": other}), resume=True)
    built = Trainer(TrainConfig.from_dict({**cfg.to_dict(), "steps": 3}), resume=True)   # holds the folder
    with pytest.raises(CheckpointError, match="an earlier Trainer in this process still holds this folder"):
        Trainer(TrainConfig.from_dict({**cfg.to_dict(), "steps": 3}), resume=True)
    built.close()
    Trainer(TrainConfig.from_dict({**cfg.to_dict(), "steps": 3}), resume=True).run()
    assert latest_checkpoint(run).name == "step_0000003"


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    import errno

    def no_locks(*a):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock the run folder here"):
        assert _train(tmp_path / "run", 2) == 0
