"""Class-conditional generation: the class embedding, labels in the data, label dropout, generate(labels=, guidance=)
and the command line (ddpm train --class-cond, ddpm sample --class, eval quality / nll of a conditional run)."""
import json

import numpy as np
import pytest
import torch

from ddpm.cli.main import main
from ddpm.core.schedule import ScheduleConfig, make_schedule
from ddpm.data.batches import Batches
from ddpm.data.datasets import DataConfig, DataError
from ddpm.data.embedded import DIGIT_CLASSES
from ddpm.data.labels import load_labels
from ddpm.model.unet import UNet, UNetConfig, preset
from ddpm.runs.config import TrainConfig
from ddpm.sampling.generate import LoadedRun, class_labels, generate

TINY = ["--preset", "tiny", "--data", "sklearn-digits", "--image-size", "8", "--timesteps", "20",
        "--batch-size", "8", "--no-progress", "--sample-every", "100"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ------------------------------------------------------------------------------------------- the network

def test_unconditional_network_is_unchanged():
    """No embedding when num_classes is 0: the parameters, the state dict and the saved config are the old ones."""
    torch.manual_seed(0)
    plain = UNet(preset("tiny"))
    assert plain.class_emb is None and plain.null_class is None
    assert "num_classes" not in plain.config.to_dict()
    assert not any("class_emb" in k for k in plain.state_dict())
    assert UNetConfig.from_dict(plain.config.to_dict()) == preset("tiny")


def test_conditional_network_adds_one_embedding_row_per_class_plus_no_class():
    torch.manual_seed(0)
    plain = UNet(preset("tiny"))
    torch.manual_seed(0)
    cond = UNet(preset("tiny", num_classes=3))
    emb_dim = 4 * cond.config.base_channels
    assert cond.class_emb.weight.shape == (4, emb_dim) and cond.null_class == 3
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert extra == {"class_emb.weight"}
    # the embedding is made last: every other layer starts from the unconditional network's weights
    for k, v in plain.state_dict().items():
        assert torch.equal(v, cond.state_dict()[k]), k
    assert UNetConfig.from_dict(json.loads(json.dumps(cond.config.to_dict()))) == cond.config


def test_no_class_path_and_labels_change_the_output():
    torch.manual_seed(0)
    net = UNet(preset("tiny", num_classes=3)).eval()
    with torch.no_grad():
        for p in net.parameters():            # the zero-initialised output layers would make every output 0
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 9, 19])
    with torch.no_grad():
        none = net(x, t)
        assert torch.equal(none, net(x, t, None))
        assert torch.allclose(none, net(x, t, torch.full((4,), 3)), atol=1e-6)   # None is the "no class" index
        assert torch.allclose(net(x, t, torch.tensor(1)), net(x, t, torch.ones(4, dtype=torch.long)), atol=1e-6)
        a, b = net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long))
        assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="integer class labels"):
        net(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(preset("tiny"))(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        preset("tiny", num_classes=-1)


# --------------------------------------------------------------------------------------------- configs

def test_configs_of_unconditional_runs_are_unchanged_and_old_ones_load():
    d = TrainConfig.for_preset("digits").to_dict()
    assert "label_dropout" not in d and "class_cond" not in d["data"] and "num_classes" not in d["model"]
    old = {k: v for k, v in d.items()}
    assert TrainConfig.from_dict(old).class_names is None


def test_conditional_config_round_trips_and_sizes_the_network():
    cfg = TrainConfig.for_preset("digits", data=DataConfig(class_cond=True), label_dropout=0.2)
    assert cfg.class_names == DIGIT_CLASSES and cfg.model.num_classes == 10
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.class_names == DIGIT_CLASSES and again.model.num_classes == 10 and again.label_dropout == 0.2
    named = cfg.with_class_names(["cat", "dog"])
    assert named.model.num_classes == 2 and named.class_names == ("cat", "dog")
    # the recipe is the unconditional digits recipe
    plain = TrainConfig.for_preset("digits")
    assert (cfg.lr, cfg.steps, cfg.batch_size, cfg.lr_schedule) == (plain.lr, plain.steps, plain.batch_size,
                                                                      plain.lr_schedule)
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig.for_preset("digits", label_dropout=1.0)
    with pytest.raises(DataError, match="class_cond"):
        DataConfig(class_names=["a"])


# ---------------------------------------------------------------------------------------------- labels

def _png(path, value=128):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)


def test_folder_labels_come_from_sorted_sub_folders(tmp_path):
    from ddpm.data.datasets import load_images
    root = tmp_path / "pets"
    _png(root / "dog" / "a.png", 10)
    _png(root / "cat" / "b.png", 20)
    _png(root / "cat" / "deep" / "c.png", 30)          # any depth below its class folder
    _png(root / "emu" / "d.png", 40)
    (root / ".hidden").mkdir()                          # skipped, like hidden files
    cfg = DataConfig(source=str(root), image_size=8, class_cond=True)
    labels, names = load_labels(cfg)
    assert names == ("cat", "dog", "emu")
    images = load_images(cfg)
    # labels in the images' order: cat/b (20), cat/deep/c (30), dog/a (10), emu/d (40)
    assert images[:, 0, 0, 0].tolist() == [20, 30, 10, 40] and labels.tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("layout, message", [
    ({"a.png": None}, "no sub-folders"),
    ({"cat/a.png": None, "b.png": None}, "outside the class sub-folders"),
    ({"cat/a.png": None, "dog/notes.txt": "x"}, "a class sub-folder with no images"),
])
def test_bad_folder_labels_are_one_line(tmp_path, layout, message):
    root = tmp_path / "data"
    for rel, text in layout.items():
        if text is None:
            _png(root / rel)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    message = message.replace("no sub-folders", "has none")
    with pytest.raises(DataError, match=message) as e:
        load_labels(DataConfig(source=str(root), image_size=8, class_cond=True))
    assert "\n" not in str(e.value)


def _npz(tmp_path, name="d.npz", n=6, **arrays):
    path = tmp_path / name
    np.savez(path, images=np.zeros((n, 8, 8), dtype=np.uint8), **arrays)
    return path


@pytest.mark.parametrize("key", ["y", "labels"])
def test_npz_labels(tmp_path, key):
    path = _npz(tmp_path, **{key: np.array([2, 0, 1, 1, 0, 2])})
    labels, names = load_labels(DataConfig(source=str(path), image_size=8, class_cond=True))
    assert labels.tolist() == [2, 0, 1, 1, 0, 2] and labels.dtype == torch.int64 and names == ("0", "1", "2")
    whole = _npz(tmp_path, "f.npz", y=np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))   # whole-number floats are integers
    assert load_labels(DataConfig(source=str(whole), image_size=8, class_cond=True))[0].tolist() == [1, 0] * 3


def test_npz_with_images_under_another_name_beside_the_labels(tmp_path):
    from ddpm.data.datasets import load_images
    np.savez(tmp_path / "d.npz", digits=np.full((3, 8, 8), 7, dtype=np.uint8), y=np.array([0, 1, 0]))
    cfg = DataConfig(source=str(tmp_path / "d.npz"), image_size=8, class_cond=True)
    assert load_images(cfg).shape == (3, 1, 8, 8) and load_labels(cfg)[0].tolist() == [0, 1, 0]


@pytest.mark.parametrize("arrays, message", [
    ({}, "holds no class labels"),
    ({"y": np.array([0, 1, 0])}, "3 class labels for 6 images"),
    ({"y": np.array([0, 1, -1, 0, 1, 0])}, "is negative"),
    ({"y": np.array([0, 1, 0.5, 0, 1, 0])}, "not a whole number"),
    ({"y": np.array([0, 2, 0, 2, 0, 2])}, "class 1 has no image"),
    ({"y": np.zeros((6, 1), dtype=int)}, "shape"),
    ({"y": np.array(["a"] * 6)}, "dtype"),
])
def test_bad_npz_labels_are_one_line(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as e:
        load_labels(DataConfig(source=str(path), image_size=8, class_cond=True))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_npy_has_no_labels(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((4, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="numpy.savez"):
        load_labels(DataConfig(source=str(tmp_path / "d.npy"), image_size=8, class_cond=True))


def test_embedded_digits_carry_their_labels():
    from ddpm.data.embedded import sklearn_digits_split
    labels, names = load_labels(DataConfig(source="sklearn-digits", image_size=8, split="test", class_cond=True))
    assert names == DIGIT_CLASSES and torch.equal(labels, sklearn_digits_split("test")[1])


def test_batches_carry_labels_with_their_images_through_shuffles_shards_and_resume():
    n = 40
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    labels = torch.arange(n) * 7 % 5
    for rank in (0, 1):
        b = Batches(images, 6, seed=3, labels=labels, rank=rank, world_size=2)
        for _ in range(9):                               # across an epoch boundary
            x, y = next(b)
            idx = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
            assert torch.equal(y, labels[idx])
    plain = Batches(images, 6, seed=3)
    with_labels = Batches(images, 6, seed=3, labels=labels)
    for _ in range(5):                                   # the same image order as without labels
        assert torch.equal(next(plain), next(with_labels)[0])
    state = with_labels.state_dict()
    want = [next(with_labels) for _ in range(3)]
    resumed = Batches(images, 6, seed=0, labels=labels)
    resumed.load_state_dict(state)
    for x, y in want:
        x2, y2 = next(resumed)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(TypeError, match="labels"):
        Batches(images, 6, seed=0, labels=labels[:5])


# ------------------------------------------------------------------------------------------ label dropout

def _cond_trainer(tmp_path, **kw):
    from ddpm.training.trainer import Trainer
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), model=preset("tiny"), schedule=ScheduleConfig(num_timesteps=20),
                      data=DataConfig(source="sklearn-digits", image_size=8, class_cond=True), batch_size=8, steps=2,
                      progress=False, device="cpu", **kw)
    return Trainer(cfg)


def test_label_dropout_rate_and_the_no_class_index(tmp_path):
    tr = _cond_trainer(tmp_path, label_dropout=0.3)
    assert tr.model.class_emb is not None and tr.config.model.num_classes == 10
    y = torch.arange(40000) % 10
    state = tr.gen.get_state()
    dropped = tr.loss_fn.drop_labels(y, tr.gen)
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])          # a label is kept or becomes "no class" (10), nothing else
    # binomial: standard error sqrt(0.3 * 0.7 / 40000) = 0.0023; allow 4.5 of them
    assert abs(float((~kept).double().mean()) - 0.3) < 4.5 * (0.3 * 0.7 / 40000) ** 0.5
    tr.gen.set_state(state)
    assert torch.equal(tr.loss_fn.drop_labels(y, tr.gen), dropped)  # the coins come from the trainer's own generator
    tr.loss_fn.label_dropout = 0.0
    assert torch.equal(tr.loss_fn.drop_labels(y, tr.gen), y)
    tr.close()


def test_conditional_training_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = [*TINY, "--class-cond", "--label-dropout", "0.5", "--checkpoint-every", "2", "--log-every", "1"]
    assert main(["train", *common, "--run-dir", str(full), "--steps", "4"]) == 0
    assert main(["train", *common, "--run-dir", str(part), "--steps", "2"]) == 0
    assert main(["train", "--resume", str(part), "--steps", "4", "--no-progress"]) == 0
    from ddpm.runs.rundir import read_metrics
    a = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    assert a == [r["loss"] for r in read_metrics(part / "metrics.jsonl")] and len(a) == 4


# ------------------------------------------------------------------------------------ generate(labels=)

def _loaded(num_classes=3):
    torch.manual_seed(0)
    net = UNet(preset("tiny", num_classes=num_classes)).eval().requires_grad_(False)
    for p in net.parameters():
        p.add_(0.05 * torch.randn_like(p))
    cfg = TrainConfig(model=preset("tiny"), schedule=ScheduleConfig(num_timesteps=10),
                      data=DataConfig(source="sklearn-digits", image_size=8, class_cond=num_classes > 0,
                                      class_names=[f"c{k}" for k in range(num_classes)] if num_classes else None))
    return LoadedRun(net, make_schedule(cfg.schedule), cfg, "ckpt", torch.device("cpu"))


def test_generate_labels_are_per_sample_and_batch_size_independent():
    run = _loaded()
    labels = class_labels(3, 7)
    assert labels == [0, 1, 2, 0, 1, 2, 0]
    kw = dict(sampler="ddim", steps=3, progress=False, labels=labels, guidance=1.5)
    a, b = generate(run, 7, batch_size=3, **kw), generate(run, 7, batch_size=7, **kw)
    assert torch.equal(a.labels, torch.tensor(labels))
    assert (a.images.int() - b.images.int()).abs().max() <= 1   # convolutions may pick other kernels per batch
    alone = generate(run, 1, progress=False, sampler="ddim", steps=3, labels=[labels[0]], guidance=1.5)
    assert (alone.images[0].int() - a.images[0].int()).abs().max() <= 1
    other = generate(run, 7, batch_size=7, **{**kw, "labels": 1})
    assert not torch.equal(other.images, a.images)
    w0 = generate(run, 7, batch_size=7, **{**kw, "guidance": 0.0})
    assert not torch.equal(w0.images, a.images)
    assert generate(run, 2, progress=False, sampler="ddim", steps=3, labels="none").labels is None  # its no-class model
    assert generate(run, 2, progress=False, sampler="ddim", steps=3).labels.tolist() == [0, 1]  # default: in turn


def test_generate_checks_labels():
    run, plain = _loaded(), _loaded(0)
    with pytest.raises(ValueError, match="unconditional run"):
        generate(plain, 2, labels=1, progress=False)
    with pytest.raises(ValueError, match="outside this run's classes 0..2"):
        generate(run, 2, labels=[0, 3], progress=False)
    with pytest.raises(ValueError, match="2 integers"):
        generate(run, 2, labels=[0, 1, 2], progress=False)
    with pytest.raises(ValueError, match="needs class labels"):
        generate(run, 2, labels="none", guidance=1.0, progress=False)  # the "no class" model has none to guide to
    with pytest.raises(ValueError, match="guidance w"):
        generate(run, 2, labels=1, guidance=-1.0, progress=False)
    assert class_labels(3, per_class=2) == [0, 0, 1, 1, 2, 2] and class_labels(3, 4, classes=2) == [2] * 4


# ----------------------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", *TINY, "--class-cond", "--run-dir", str(run), "--steps", "3"]) == 0
    return run


def test_tiny_conditional_run_end_to_end(cond_run, tmp_path, capsys):
    cfg = json.loads((cond_run / "config.json").read_text())
    assert cfg["data"]["class_cond"] and cfg["data"]["class_names"] == list(DIGIT_CLASSES)
    assert cfg["model"]["num_classes"] == 10 and cfg["label_dropout"] == 0.1
    out = tmp_path / "rows"
    assert main(["sample", str(cond_run), "--per-class", "2", "--guidance", "1", "--sampler", "ddim", "--steps", "3",
                 "--chain", "2", "--no-progress", "--out", str(out)]) == 0
    assert "classes 0,1,2,3,4,5,6,7,8,9, guidance w = 1" in capsys.readouterr().out
    saved = np.load(out / "samples.npz")
    assert saved["images"].shape == (20, 8, 8, 1) and saved["labels"].tolist() == [k // 2 for k in range(20)]
    record = json.loads((out / "samples.json").read_text())
    assert record["labels"] == saved["labels"].tolist() and record["guidance"] == 1.0 and record["n"] == 20
    from PIL import Image
    with Image.open(out / "grid.png") as grid:          # 2 images a row, one row per class
        assert grid.size == (2 * 10 + 2, 10 * 10 + 2)
    assert (out / "chain.png").is_file()
    assert main(["sample", str(cond_run), "--class", "7", "-n", "3", "--sampler", "ddim", "--steps", "2",
                 "--no-progress", "--out", str(tmp_path / "sevens")]) == 0
    assert np.load(tmp_path / "sevens" / "samples.npz")["labels"].tolist() == [7, 7, 7]
    assert main(["sample", str(cond_run), "--classes", "0,3", "-n", "3", "--sampler", "ddim", "--steps", "2",
                 "--no-progress", "--out", str(tmp_path / "turns")]) == 0
    assert np.load(tmp_path / "turns" / "samples.npz")["labels"].tolist() == [0, 3, 0]
    # guidance in an interval of t: recorded, and the same images as generate() draws with it
    assert main(["sample", str(cond_run), "--class", "2", "-n", "2", "--guidance", "3", "--guidance-interval", "5-15",
                 "--sampler", "ddim", "--steps", "4", "--no-progress", "--out", str(tmp_path / "interval")]) == 0
    record = json.loads((tmp_path / "interval" / "samples.json").read_text())
    assert record["guidance_interval"] == [5, 15] and record["guidance"] == 3.0
    from ddpm.sampling.generate import generate, load_run
    want = generate(load_run(cond_run), 2, seed=record["seed"], sampler="ddim", steps=4, labels=2, guidance=3.0,
                    guidance_interval=(5, 15), progress=False).images
    assert np.array_equal(np.load(tmp_path / "interval" / "samples.npz")["images"], want.permute(0, 2, 3, 1).numpy())


def test_a_conditional_run_asked_for_no_class_draws_every_class_in_turn_unguided(cond_run, tmp_path, capsys):
    """The commands' default for a conditional run: a model of the whole data, sample k of class k mod 10, w = 0
    (one network pass a step), the images generate() draws with those labels and no guidance.  (The tiny run's
    class embedding has hardly moved from its start, so the recorded w is what tells w = 0 from w = 1 here.)"""
    from ddpm.sampling.generate import generate, load_run
    out = tmp_path / "all"
    assert main(["sample", str(cond_run), "-n", "12", "--sampler", "ddim", "--steps", "2", "--no-progress",
                 "--out", str(out)]) == 0
    assert "classes 0,1,2,3,4,5,6,7,8,9, guidance w = 0" in capsys.readouterr().out
    saved = np.load(out / "samples.npz")
    assert saved["labels"].tolist() == [k % 10 for k in range(12)]
    assert json.loads((out / "samples.json").read_text())["guidance"] == 0.0
    want = generate(load_run(cond_run), 12, sampler="ddim", steps=2, labels=[k % 10 for k in range(12)],
                    guidance=0.0, progress=False).images
    assert np.array_equal(saved["images"], want.permute(0, 2, 3, 1).numpy())


def test_eval_of_a_conditional_run(cond_run, tmp_path, capsys):
    from ddpm.evaluation.quality import conditional_accuracy
    assert main(["eval", "nll", str(cond_run), "--class-cond", "--quick", "2", "-n", "4", "--no-progress"]) == 0
    saved = json.loads((cond_run / "eval" / "class_cond" / "nll.json").read_text())
    assert saved["class_cond"] and saved["num_images"] == 4 and "log p(x | y)" in capsys.readouterr().out
    # without --class-cond: the bound of the run's "no class" model, and the output says so
    assert main(["eval", "nll", str(cond_run), "--quick", "2", "-n", "4", "--no-progress",
                 "--out", str(tmp_path / "nll")]) == 0
    assert not json.loads((tmp_path / "nll" / "nll.json").read_text())["class_cond"]
    assert "the run's 'no class' model (--class-cond" in capsys.readouterr().out
    # the samples' labels reach the quality report (a tiny 8x8 run: the numbers themselves mean nothing here)
    out = tmp_path / "s"
    assert main(["sample", str(cond_run), "--classes", "1,2", "-n", "4", "--sampler", "ddim", "--steps", "2",
                 "--no-progress", "--out", str(out)]) == 0
    assert main(["eval", "quality", str(out / "samples.npz")]) == 0
    report = json.loads((out / "samples_quality.json").read_text())
    assert set(report["conditional"]["per_class"]) == {"1", "2"} and "conditional accuracy" in capsys.readouterr().out
    # guidance flags have nothing to act on in samples already drawn: one line, before any work
    assert main(["eval", "quality", str(out / "samples.npz"), "--guidance-interval", "2-9"]) == 2
    _one_line_error(capsys, "--guidance-interval 2-9", "samples already drawn", "drop --guidance-interval")
    # the accuracy itself: rows of the confusion matrix are the classes asked for
    logits = torch.full((5, 10), -5.0)
    logits[torch.arange(5), torch.tensor([3, 3, 4, 7, 7])] = 5.0
    acc = conditional_accuracy(logits, torch.tensor([3, 3, 3, 7, 7]))
    assert acc["accuracy"] == 0.8 and acc["per_class"] == {"3": 2 / 3, "7": 1.0} and acc["min_class"] == 3
    assert acc["confusion"][3][4] == 1 and acc["per_class_n"] == {"3": 3, "7": 2}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("plain") / "run"
    assert main(["train", *TINY, "--run-dir", str(run), "--steps", "1"]) == 0
    return run


@pytest.mark.parametrize("argv, needles", [
    (["sample", "PLAIN", "--class", "7"], ["unconditional run", "--class", "--class-cond"]),
    (["sample", "PLAIN", "--per-class", "2"], ["unconditional run", "--per-class"]),
    (["eval", "nll", "PLAIN", "--class-cond"], ["unconditional run", "drop --class-cond"]),
    (["eval", "quality", "PLAIN", "--guidance", "1", "--steps", "2"], ["unconditional run", "drop --guidance"]),
    (["sample", "PLAIN", "--guidance", "2"], ["--guidance 2", "unconditional run", "drop --guidance"]),
    (["sample", "PLAIN", "--guidance-interval", "2-9"], ["--guidance-interval 2-9", "unconditional run"]),
    (["eval", "quality", "PLAIN", "--guidance-interval", "2-9", "--steps", "2"],
     ["unconditional run", "drop --guidance-interval"]),
    (["sample", "COND", "--class", "1", "--guidance", "0", "--guidance-interval", "2-9"],
     ["--guidance-interval 2-9", "add --guidance"]),
    (["sample", "COND", "--class", "1", "--guidance", "1", "--guidance-interval", "5-30"], ["t = 1..20"]),
    (["eval", "quality", "COND", "--steps", "2", "--guidance", "0", "--guidance-interval", "2-9"],
     ["--guidance-interval 2-9", "add --guidance"]),
    (["sample", "COND", "--class", "11"], ["--class 11", "its classes are 0, 1"]),
    (["sample", "COND", "--per-class", "2", "-n", "5"], ["--per-class 2", "drop -n"]),
    (["sample", "COND", "--class", "1", "--chain", "9", "-n", "4"], ["--chain 9"]),
    (["train", "--label-dropout", "0.2", "--run-dir", "NEW"], ["--label-dropout", "add --class-cond"]),
    (["train", "--class-cond", "--label-dropout", "1", "--run-dir", "NEW"], ["--label-dropout must lie in [0, 1)"]),
])
def test_class_mistakes_are_one_line_before_any_work(plain_run, cond_run, tmp_path, capsys, argv, needles):
    new = tmp_path / "new"
    argv = [{"PLAIN": str(plain_run), "COND": str(cond_run), "NEW": str(new)}.get(a, a) for a in argv]
    assert main([*argv, "--no-progress"]) == 2
    _one_line_error(capsys, *needles)
    assert not new.exists()


def test_bad_labels_stop_training_before_it_starts(tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((16, 8, 8), dtype=np.uint8), y=np.r_[np.zeros(8), np.full(8, 2)].astype(int))
    assert main(["train", *TINY[:2], *TINY[4:], "--data", str(data), "--class-cond", "--run-dir",
                 str(tmp_path / "r"), "--steps", "1"]) == 2
    _one_line_error(capsys, str(data), "class 1 has no image")
    assert not (tmp_path / "r").exists()


def test_guidance_without_a_class_flag_guides_every_class_in_turn(cond_run, tmp_path, capsys):
    """``ddpm sample --guidance W`` on a conditional run with no class flag draws every class in turn with that w, as
    ``ddpm eval quality`` does (on an unconditional run it is refused: the table above)."""
    out = tmp_path / "guided"
    assert main(["sample", str(cond_run), "-n", "4", "--guidance", "2", "--sampler", "ddim", "--steps", "2",
                 "--no-progress", "--out", str(out)]) == 0
    assert "classes 0,1,2,3, guidance w = 2" in capsys.readouterr().out
    record = json.loads((out / "samples.json").read_text())
    assert record["labels"] == [0, 1, 2, 3] and record["guidance"] == 2.0
