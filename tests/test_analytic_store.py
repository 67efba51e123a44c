"""The analytic variance's stored estimate (checkpoints/step_N/analytic.json): written when training ends, used
before any new estimate, carried by export and import, so that the default draw does not depend on where the
training data is.  The runs are tiny (T = 200, 3 training steps, 8 x 8 digits); bytes are compared exactly."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY

from ddpm.cli.main import main
from ddpm.core.analytic import analytic_variances
from ddpm.core.respace import respace
from ddpm.data.datasets import to_model_range
from ddpm.data.embedded import sklearn_digits_split
from ddpm.runs.checkpoint import CheckpointError, analytic_record, check_analytic, read_analytic
from ddpm.sampling.defaults import analytic_available, resolve_sampling
from ddpm.sampling.generate import load_run
from ddpm.sampling.stored import default_settings
from ddpm.sampling.variance import ANALYTIC_IMAGES, ANALYTIC_SEED, analytic_sigma2

FLAGS = [*TINY[:TINY.index("--timesteps")], "--timesteps", "200", *TINY[TINY.index("--timesteps") + 2:]]


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A class-conditional tiny run trained on a .npz file of 100 digits (so that the data can be moved away)."""
    root = tmp_path_factory.mktemp("store")
    x, y = sklearn_digits_split("train")
    np.savez(root / "digits.npz", images=x[:100].numpy(), labels=y[:100].numpy())
    flags = [f if f != "sklearn-digits" else str(root / "digits.npz") for f in FLAGS]
    assert main(["train", *flags, "--class-cond", "--run-dir", str(root / "run"), "--steps", "3"]) == 0
    return root / "run"


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return dest


def ckpt_of(run):
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def draw(run, out, capsys):
    """``ddpm sample RUN -n 8 --seed 5``: the bytes of samples.npz, and the record samples.json keeps."""
    assert main(["sample", str(run), "-n", "8", "--seed", "5", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return (out / "samples.npz").read_bytes(), json.loads((out / "samples.json").read_text())


def test_training_stores_the_default_draws_estimates(cond_run, tiny_run):
    cond = read_analytic(ckpt_of(cond_run))
    assert {json.dumps(e["guidance"]) for e in cond} == {json.dumps({"w": 0.0, "interval": None}),
                                                         json.dumps({"w": 1.0, "interval": None})}
    assert all(e["weights"] == "ema" and e["images"] == ANALYTIC_IMAGES and e["seed"] == ANALYTIC_SEED for e in cond)
    run = load_run(cond_run)
    (timesteps, _), _ = default_settings(run)
    assert len(timesteps) == 100
    assert all(sorted(map(int, e["gamma"])) == timesteps.tolist() for e in cond)
    plain = read_analytic(ckpt_of(tiny_run))  # an unconditional run: the network without labels
    assert [e["guidance"] for e in plain] == [None] and len(plain[0]["gamma"]) == 20  # T = 20: all of them


def test_the_stored_gamma_is_the_mean_squared_noise_prediction(cond_run):
    """Gamma_t by hand at two steps: the 64 training images the seed picks, noised with generator seed + t (eq. 4),
    through the network with their own labels (w = 0) and guided with w = 1, 2 eps(x, t, y) - eps(x, t, "no class"):
    within float32 rounding (1e-4 relative) of the stored values."""
    run = load_run(cond_run)
    stored = {e["guidance"]["w"]: e["gamma"] for e in read_analytic(run.checkpoint)}
    x, y = sklearn_digits_split("train")
    pick = torch.randperm(100, generator=torch.Generator().manual_seed(ANALYTIC_SEED))[:ANALYTIC_IMAGES]
    x0, labels = to_model_range(x[:100][pick], "cpu"), y[:100][pick]
    for t in (int(min(stored[0.0], key=int)), int(max(stored[0.0], key=int))):
        abar = float(run.schedule.alpha_bars[t])
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(ANALYTIC_SEED + t))
        x_t, t_batch = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * eps, torch.full((len(x0),), t)
        with torch.no_grad():
            cond = run.model(x_t, t_batch, labels).double()
            uncond = run.model(x_t, t_batch, torch.full_like(labels, 10)).double()
        for w, pred in ((0.0, cond), (1.0, 2 * cond - uncond)):
            want = float(pred.pow(2).mean())
            assert want > 0 and math.isclose(stored[w][str(t)], want, rel_tol=1e-4), (t, w)
        assert stored[0.0][str(t)] != stored[1.0][str(t)]


def test_an_older_run_folder_gains_its_store_and_a_fresh_estimate_equals_it(cond_run, tmp_path):
    run = copy_run(cond_run, tmp_path / "old")
    before = read_analytic(ckpt_of(run))
    (ckpt_of(run) / "analytic.json").unlink()  # a run folder written before the store
    loaded = load_run(run)
    for timesteps, guide in default_settings(loaded):
        analytic_sigma2(loaded, timesteps, guide=guide)
    assert read_analytic(ckpt_of(run)) == before  # the fresh estimate, stored, equals the stored one exactly
    entry = before[0]
    timesteps = torch.tensor(sorted(map(int, entry["gamma"])))
    g = entry["guidance"]
    want = analytic_variances(respace(loaded.schedule, timesteps),
                              torch.tensor([entry["gamma"][str(t)] for t in timesteps.tolist()], dtype=torch.float64))
    assert torch.equal(analytic_sigma2(load_run(run), timesteps, guide=(g["w"], g["interval"])), want)


def test_moved_data_and_export_import_draw_the_same_bytes(cond_run, tmp_path, capsys):
    run = copy_run(cond_run, tmp_path / "run")
    data = tmp_path / "digits.npz"
    shutil.copy(cond_run.parent / "digits.npz", data)
    cfg = json.loads((ckpt_of(run) / "config.json").read_text())
    assert cfg["data"]["source"] == str(cond_run.parent / "digits.npz")
    # point the copy at a data file of its own, then move that away
    for f in (run / "config.json", ckpt_of(run) / "config.json"):
        text = json.loads(f.read_text())
        text["data"]["source"] = str(data)
        f.write_text(json.dumps(text))
    here, record = draw(run, tmp_path / "here", capsys)
    assert "\"variance\": \"analytic\"" in json.dumps(record)  # the default draw: the analytic variance
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    data.rename(tmp_path / "elsewhere.npz")
    moved, _ = draw(run, tmp_path / "moved", capsys)
    assert moved == here
    exported = json.loads((tmp_path / "exported" / "ddpm_config.json").read_text())
    assert check_analytic(exported["analytic"], "ddpm_config.json")  # carried, and readable
    assert main(["import", str(tmp_path / "exported"), str(tmp_path / "back")]) == 0
    assert "with the analytic-variance estimate of the export" in capsys.readouterr().out
    again, _ = draw(tmp_path / "back", tmp_path / "again", capsys)
    assert again == here
    # without the store and the data, the paper's sampler, with a note (what a foreign network imported gets)
    (ckpt_of(tmp_path / "back") / "analytic.json").unlink()
    assert not analytic_available(load_run(tmp_path / "back"))
    notes = []
    assert resolve_sampling(load_run(tmp_path / "back"), note=notes.append).variance is None and len(notes) == 1


@pytest.mark.parametrize("damage", ["truncated", "nan", "format"])
def test_a_damaged_store_is_refused_without_the_data_and_estimated_again_with_it(cond_run, tmp_path, capsys,
                                                                                  damage):
    run = copy_run(cond_run, tmp_path / "run")
    store = ckpt_of(run) / "analytic.json"
    good = store.read_text()
    store.write_text({"truncated": good[:len(good) // 2],
                      "nan": good.replace(next(v for v in good.split() if v[0].isdigit() and "." in v), "NaN", 1),
                      "format": good.replace("ddpm-analytic-gamma/1", "other")}[damage])
    with pytest.raises(CheckpointError, match="analytic.json"):
        read_analytic(ckpt_of(run))
    here, _ = draw(cond_run, tmp_path / "here", capsys)
    with pytest.warns(UserWarning, match="estimating Gamma again"):
        again, _ = draw(run, tmp_path / "again", capsys)  # the data is here: estimated again, the same draw
    assert again == here
    rewritten = read_analytic(ckpt_of(run))  # what this draw needed (w = 0), as it was before the damage
    assert len(rewritten) == 1 and rewritten[0] in check_analytic(json.loads(good), "good")
    store.write_text(good[:len(good) // 2])
    for f in (run / "config.json", ckpt_of(run) / "config.json"):
        text = json.loads(f.read_text())
        text["data"]["source"] = str(tmp_path / "gone.npz")
        f.write_text(json.dumps(text))
    assert main(["sample", str(run), "-n", "2", "--out", str(tmp_path / "no"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analytic.json" in err[0] and "--variance fixed-large" in err[0]


@pytest.mark.parametrize("bad", [
    {"format": "ddpm-analytic-gamma/1"},
    {"format": "ddpm-analytic-gamma/1", "estimates": [{"weights": "ema"}]},
    analytic_record([{"weights": "other", "guidance": None, "images": 64, "seed": 1, "gamma": {"0": 1.0}}]),
    analytic_record([{"weights": "ema", "guidance": {"w": "1"}, "images": 64, "seed": 1, "gamma": {"0": 1.0}}]),
    analytic_record([{"weights": "ema", "guidance": None, "images": 64, "seed": 1, "gamma": {"a": 1.0}}]),
    analytic_record([{"weights": "ema", "guidance": None, "images": 64, "seed": 1, "gamma": {"0": -1.0}}]),
    analytic_record([{"weights": "ema", "guidance": None, "images": 64, "seed": 1, "gamma": {}}]),
])
def test_check_analytic_refuses_what_is_not_an_estimate(bad):
    with pytest.raises(CheckpointError, match="^where: "):
        check_analytic(bad, "where")
    ok = analytic_record([{"weights": "ema", "guidance": {"w": 1, "interval": [0, 9]}, "images": 64, "seed": 1,
                           "gamma": {"0": 1}}])
    assert check_analytic(ok, "where")[0]["guidance"] == {"w": 1.0, "interval": [0, 9]}


def test_a_damaged_estimate_in_an_export_is_left_out_of_the_import_with_a_warning(cond_run, tmp_path):
    assert main(["export", str(cond_run), str(tmp_path / "out")]) == 0
    config = tmp_path / "out" / "ddpm_config.json"
    saved = json.loads(config.read_text())
    saved["analytic"]["estimates"][0]["gamma"] = {"0": "x"}
    config.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="analytic-variance estimate is left out"):
        assert main(["import", str(tmp_path / "out"), str(tmp_path / "back")]) == 0
    assert not (ckpt_of(tmp_path / "back") / "analytic.json").exists()
    assert json.loads((ckpt_of(tmp_path / "back") / "config.json").read_text())["data"] == saved["data"]


def test_the_store_takes_the_ema_of_every_decay_and_refuses_unknown_weights():
    from ddpm.runs.checkpoint import is_weight_set
    entry = {"guidance": None, "images": 4, "seed": 1, "gamma": {"0": 1.0}}
    for name in ("ema", "model", "ema:0.4", "ema:0.9999"):
        assert is_weight_set(name)
        assert check_analytic(analytic_record([{**entry, "weights": name}]), "x")
    for name in ("ema:", "ema:1.5", "ema:abc", "posthoc", 3):
        assert not is_weight_set(name)
        with pytest.raises(CheckpointError, match="weights"):
            check_analytic(analytic_record([{**entry, "weights": name}]), "x")
