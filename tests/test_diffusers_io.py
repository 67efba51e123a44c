"""``ddpm import`` and ``ddpm export`` end to end (runs/diffusers_io.py through the CLI): a diffusers folder becomes
a run every command reads; a run becomes a folder DDPMPipeline loads and samples the same images from; export then
import gives every tensor back bit for bit; nothing pickled runs; every mistake is one line and exit status 2."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm.cli.main import main
from ddpm.core.schedule import ScheduleConfig
from ddpm.data.datasets import DataConfig
from ddpm.model.unet import UNet, UNetConfig
from ddpm.runs.checkpoint import load_checkpoint, save_checkpoint
from ddpm.runs.config import TrainConfig
from ddpm.runtime.atomic import write_json_atomic
from ddpm.sampling.generate import load_run

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()

#: google/ddpm-cifar10-32's network at 16 channels, as a 16 px network for speed
SMALL = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
             down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
             flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, norm_num_groups=8,
             attention_head_dim=None)


def _randomise(model: torch.nn.Module, seed: int = 0, out_scale: float = 1.0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(scale + 0.1 * torch.randn(p.shape, generator=g))
        for name, p in model.named_parameters():
            if name.startswith("conv_out"):
                p.mul_(out_scale)
    return model.eval()


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A DDPMPipeline folder as diffusers writes it: random SMALL network, the paper's scheduler (T cut to 50)."""
    folder = tmp_path_factory.mktemp("hub") / "ddpm-small"
    unet = _randomise(diffusers.UNet2DModel(**SMALL))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.2,
                                        variance_type="fixed_large")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def imported(pipeline_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("imported") / "run"
    assert main(["import", str(pipeline_folder), str(run)]) == 0
    return run


def test_import_writes_a_run_that_computes_what_diffusers_computes(pipeline_folder, imported, capsys):
    saved = json.loads((imported / "config.json").read_text())
    assert saved["imported"]["format"] == "diffusers" and len(saved["imported"]["weights_sha256"]) == 64
    assert saved["variance"] == "fixed-large" and saved["schedule"]["num_timesteps"] == 50
    assert saved["model"]["downsample_padding"] == "bottom-right"
    ck = load_checkpoint(imported)
    assert ck["path"].name == "step_0000000" and all(torch.equal(ck["model"][k], ck["ema"][k]) for k in ck["model"])
    run = load_run(imported)
    theirs = diffusers.UNet2DModel.from_pretrained(pipeline_folder / "unet").eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 17, 49])
    with torch.no_grad():
        a, b = run.model(x, t), theirs(x, t).sample
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    scheduler = diffusers.DDPMScheduler.from_pretrained(pipeline_folder / "scheduler")
    torch.testing.assert_close(run.schedule.alpha_bars, scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_every_command_reads_an_imported_run(imported, tmp_path, capsys):
    assert main(["sample", str(imported), "-n", "2", "--sampler", "ddim", "--steps", "5", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["images"].shape[0] == 2
    data = tmp_path / "test.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    assert main(["eval", "nll", str(imported), "--data", str(data), "--quick", "3", "--no-progress",
                 "--out", str(tmp_path / "nll")]) == 0
    assert json.loads((tmp_path / "nll" / "nll.json").read_text())["num_images"] == 3
    assert main(["study", "noise", str(imported), "-n", "2", "--out", str(tmp_path / "st"), "--no-progress"]) == 0
    capsys.readouterr()
    # without --data there are no held-out images to bound: one line says what to pass
    assert main(["eval", "nll", str(imported), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pass --data HELD_OUT_IMAGES" in err
    # and an imported run has no training state to resume
    assert main(["train", "--resume", str(imported)]) == 2
    assert "ddpm train --init-from" in capsys.readouterr().err


def test_eval_fid_and_quality_draw_their_samples_from_an_imported_run(imported, tmp_path, monkeypatch, capsys):
    """The metrics themselves need torch-fidelity's Inception weights (FID) or the digit classifier (quality); here
    they are stand-ins that look at what the commands hand them: samples drawn from the imported network."""
    import ddpm.cli.evaluate as evaluate
    seen = {}

    def fid(images, ref):
        seen["fid"] = images
        return {"fid": 1.0, "n_generated": len(images), "n_reference": 3}

    def quality(images, out, name, labels=None):
        seen["quality"] = images
        return {}
    monkeypatch.setattr(evaluate, "check_fid_available", lambda ref=None: None)
    monkeypatch.setattr(evaluate, "run_fid", fid)
    monkeypatch.setattr(evaluate, "run_quality", quality)
    monkeypatch.setattr(evaluate, "quality_summary", lambda report: "")
    assert main(["eval", "fid", str(imported), "--ref", "refs.npy", "-n", "2", "--steps", "2", "--no-progress"]) == 0
    assert main(["eval", "quality", str(imported), "-n", "2", "--steps", "2", "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    assert seen["fid"].shape == (2, 3, 16, 16) and seen["fid"].dtype == torch.uint8
    assert seen["quality"].shape == (2, 3, 16, 16)
    assert "FID 1.000" in capsys.readouterr().out


def test_bin_weights_with_old_attention_names_import_like_safetensors(pipeline_folder, imported, tmp_path):
    """The google/ddpm-* files are .bin with the attention names of diffusers before 0.17 (query, key, value,
    proj_attn); torch.load(weights_only=True) reads them."""
    folder = tmp_path / "old"
    shutil.copytree(pipeline_folder, folder)
    state = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
           .replace(".to_out.0.", ".proj_attn."): v for k, v in state.items()}
    torch.save(old, folder / "unet" / "diffusion_pytorch_model.bin")
    assert main(["import", str(folder), str(tmp_path / "run")]) == 0
    a, b = load_checkpoint(tmp_path / "run")["ema"], load_checkpoint(imported)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in b)


class _Payload:
    """Unpickling this would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_bin_file_holding_code_is_refused_before_it_runs(pipeline_folder, tmp_path, capsys):
    folder = tmp_path / "evil"
    shutil.copytree(pipeline_folder, folder)
    state = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "it-ran"
    torch.save({**state, "payload": _Payload(marker)}, folder / "unet" / "diffusion_pytorch_model.bin")
    assert main(["import", str(folder), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "diffusion_pytorch_model.bin: refused" in err and "weights_only=True" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_import_refuses_nan_weights_naming_the_file_and_tensor(pipeline_folder, tmp_path, capsys):
    folder = tmp_path / "diverged"
    shutil.copytree(pipeline_folder, folder)
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state["mid_block.resnets.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(f))
    assert main(["import", str(folder), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "diffusion_pytorch_model.safetensors: mid_block.resnets.0.conv1.weight holds NaN" in err


def test_import_mistakes_are_one_line(pipeline_folder, imported, tmp_path, capsys):
    cases = [
        (["import", str(tmp_path / "nowhere"), str(tmp_path / "r1")], "no such folder"),
        (["import", str(pipeline_folder), str(imported)], "already exists and is not empty"),
        (["import", str(pipeline_folder), str(tmp_path / "r2"), "--timesteps", "100"], "brings its own schedule"),
        (["import", str(pipeline_folder), str(tmp_path / "r3"), "--variance", "learned-range"], "predicts eps only"),
        (["import", str(tmp_path), str(tmp_path / "r4")], "not a diffusers model folder"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err, err


def test_a_bare_unet_folder_takes_its_schedule_from_flags(pipeline_folder, tmp_path):
    run = tmp_path / "run"
    assert main(["import", str(pipeline_folder / "unet"), str(run), "--schedule", "cosine", "--timesteps", "30",
                 "--variance", "fixed-small"]) == 0
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.schedule == ScheduleConfig(kind="cosine", num_timesteps=30) and cfg.variance == "fixed-small"


# --- export ------------------------------------------------------------------------------------------------------

def _digits_run(tmp_path, variance="fixed-large", T=40, class_cond=False) -> object:
    """A run folder of a small network for 16 px grey digits, with random non-zero weights (an untrained ddpm U-Net
    outputs exactly zero), written as the trainer writes one; plus a measured bound for the model card."""
    run = tmp_path / f"digits-{variance}{'-cond' if class_cond else ''}"
    names = tuple(str(k) for k in range(10)) if class_cond else None
    cfg = TrainConfig(run_dir=str(run), data=DataConfig(source="digits", image_size=16, channels=1,
                                                        class_cond=class_cond, class_names=names),
                      model=UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                       attention_resolutions=(8,), dropout=0.0, image_size=16, num_groups=4),
                      schedule=ScheduleConfig(num_timesteps=T, beta_end=0.3), variance=variance,
                      loss="hybrid" if variance == "learned-range" else "simple", steps=1200)
    model, ema = _randomise(UNet(cfg.model), 1, 0.3), _randomise(UNet(cfg.model), 2, 0.3)
    save_checkpoint(run, 1200, model=model, ema=ema, trainer_state={"step": 1200}, config=cfg.to_dict())
    write_json_atomic(run / "config.json", cfg.to_dict())
    write_json_atomic(run / "eval" / "nll.json", {"bpd": 1.903, "bpd_stderr": 0.01, "mode": "quick", "k": 50,
                                                  "num_images": 500, "variance": variance})
    return run


@pytest.mark.parametrize("variance", ["fixed-large", "fixed-small", "learned-range"])
def test_ddpm_pipeline_samples_the_images_ddpm_sample_draws(tmp_path, variance):
    """Same initial noise and same per-step noise (one generator per sample, seeded alike on both sides), all T steps
    of Algorithm 2 with x_0 clipped: DDPMPipeline's images are ddpm sample's within one grey level of 255."""
    run = _digits_run(tmp_path, variance)
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert main(["sample", str(run), "-n", "3", "--variance", variance, "--out", str(tmp_path / "ours"),
                 "--no-progress"]) == 0  # the run's own variance, all T steps: the paper's Algorithm 2
    ours = np.load(tmp_path / "ours" / "samples.npz")["images"].astype(np.int16)  # (3, 16, 16, 1) uint8
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(k) for k in range(3)]  # ddpm sample --seed 0 gives sample k seed k
    theirs = pipe(batch_size=3, generator=generators, num_inference_steps=40, output_type="np").images
    theirs = np.round(theirs * 255).astype(np.int16)
    assert theirs.shape == ours.shape and ours.std() > 20  # real images, not all black or all white
    assert np.abs(theirs - ours).max() <= 1 and (theirs == ours).mean() > 0.99


def test_export_then_import_gives_every_tensor_back_bit_for_bit(tmp_path):
    run = _digits_run(tmp_path)
    for which in ("ema", "model"):
        out, back = tmp_path / f"exported-{which}", tmp_path / f"back-{which}"
        assert main(["export", str(run), str(out), "--weights", which]) == 0
        assert main(["import", str(out), str(back)]) == 0
        a, b = load_checkpoint(run), load_checkpoint(back)
        assert set(a[which]) == set(b["ema"]) and all(torch.equal(a[which][k], b["ema"][k]) for k in a[which])
        assert all(torch.equal(a[which][k], b["model"][k]) for k in a[which])
        # ddpm_config.json brings the rest of the run's config back too (data, recipe, dropout, spelling)
        original = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        again = TrainConfig.from_dict(json.loads((back / "config.json").read_text()))
        assert again.to_dict() == {**original.to_dict(), "run_dir": str(back)}


def test_a_class_conditional_run_goes_out_and_back(tmp_path, capsys):
    """The class embedding is diffusers' plain one (num_class_embeds = K + 1, the last row 'no class'): the exported
    UNet2DModel given class_labels computes what ddpm's network computes given y, and the round trip is exact.  A
    class embedding without ddpm_config.json to say what its rows mean is refused in one line."""
    run = _digits_run(tmp_path, class_cond=True)
    out, back = tmp_path / "exported", tmp_path / "back"
    assert main(["export", str(run), str(out)]) == 0
    theirs = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    assert theirs.config.num_class_embeds == 11
    ours = load_run(run).model
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 9, 20, 39]), torch.tensor([3, 7, 10, 0])
    with torch.no_grad():
        a, b = ours(x, t, y), theirs(x, t, class_labels=y).sample
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    assert "class_labels=y" in (out / "README.md").read_text()
    assert main(["import", str(out), str(back)]) == 0
    again = load_run(back)
    assert again.class_names == tuple(str(k) for k in range(10))
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in ours.state_dict().items())
    (out / "ddpm_config.json").unlink()
    capsys.readouterr()
    assert main(["import", str(out), str(tmp_path / "bare")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "num_class_embeds = 11" in err


def test_export_writes_a_loadable_folder_with_a_model_card(tmp_path, capsys):
    run = _digits_run(tmp_path, "learned-range")
    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "ddpm_config.json", "model_index.json", "scheduler",
                                                     "unet"]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "1.903 +- 0.010 bits/dim on 500 images" in card
    assert "step 1,200" in card and "learned-range" in card and "num_inference_steps=40" in card
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.variance_type == "learned_range" and pipe.unet.config.out_channels == 2
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 2  # never over an existing folder
    assert "already exists" in capsys.readouterr().err


def test_a_network_diffusers_cannot_hold_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = TrainConfig(run_dir=str(run), model=UNetConfig(in_channels=1, base_channels=12, channel_mult=(1, 2),
                                                         num_res_blocks=1, attention_resolutions=(), image_size=8,
                                                         num_groups=8),
                      data=DataConfig(source="digits", image_size=8))
    net = UNet(cfg.model)
    save_checkpoint(run, 1, model=net, ema=net, trainer_state={"step": 1}, config=cfg.to_dict())
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be written as a diffusers UNet2DModel: num_groups 8 does not divide" in err
    assert not (tmp_path / "out").exists()


def test_train_init_from_fine_tunes_an_imported_run(imported, tmp_path):
    run = tmp_path / "ft"
    assert main(["train", "--init-from", str(imported), "--data", "sklearn-digits", "--batch-size", "4", "--steps", "2",
                 "--run-dir", str(run), "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["init_from"].endswith("step_0000000") and cfg["model"]["downsample_padding"] == "bottom-right"
    assert (cfg["data"]["channels"], cfg["data"]["image_size"], cfg["variance"]) == (3, 16, "fixed-large")
    assert cfg["schedule"]["num_timesteps"] == 50  # the source's schedule, unless told otherwise


def test_the_help_examples_of_import_run(pipeline_folder, tmp_path, monkeypatch):
    """The --help examples that read a run or a folder, run where they point (here: a small stand-in)."""
    import shlex

    from ddpm.cli.interop import IMPORT_EXAMPLES
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pipeline_folder, "ddpm-cifar10-32")
    for line in IMPORT_EXAMPLES.splitlines():
        args = shlex.split(line.split("#")[0])
        if not args or args[:2] != ["ddpm", "import"] or "my-unet" in args:
            continue
        assert main(args[1:]) == 0, line


def test_import_sample_and_export_need_no_diffusers(pipeline_folder, tmp_path):
    """diffusers is a format here, not a dependency: with it unimportable, a folder still imports, samples and
    exports."""
    import subprocess
    import sys
    script = ("import sys; sys.modules['diffusers'] = None\n"  # any `import diffusers` now raises ImportError
              "from ddpm.cli.main import main\n"
              f"assert main(['import', {str(pipeline_folder)!r}, {str(tmp_path / 'run')!r}]) == 0\n"
              f"assert main(['sample', {str(tmp_path / 'run')!r}, '-n', '1', '--sampler', 'ddim', '--steps', '2', "
              "'--no-progress']) == 0\n"
              f"assert main(['export', {str(tmp_path / 'run')!r}, {str(tmp_path / 'out')!r}]) == 0\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
