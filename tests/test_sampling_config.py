"""How to draw (sampling/config.py): SamplingConfig's checks and defaults, the sampler registry, and that the
library, the command line and the page draw the same images by default."""
import dataclasses
import re

import numpy as np
import pytest
import torch
from conftest import TINY

from ddpm import SamplingConfig
from ddpm.cli.main import main
from ddpm.core.samplers import REGISTRY, SamplerSpec, draw_ddim, run_sampler
from ddpm.sampling.config import parse_class
from ddpm.sampling.generate import generate, load_run, model_fn


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", *TINY, "--class-cond", "--run-dir", str(run), "--steps", "2"]) == 0
    return run


@pytest.mark.parametrize("kind", ["unconditional", "conditional"])
def test_ddpm_sample_and_generate_with_no_settings_give_the_same_bytes(kind, tiny_run, cond_run, tmp_path):
    """`ddpm sample RUN -n 8 --seed 5` and `ddpm.generate(ddpm.load_run(RUN), 8, seed=5).images` draw the same images
    (the one default); on a class-conditional run both draw every class in turn with w = 0."""
    run = tiny_run if kind == "unconditional" else cond_run
    out = tmp_path / "s"
    assert main(["sample", str(run), "-n", "8", "--seed", "5", "--no-progress", "--out", str(out)]) == 0
    drawn = generate(load_run(run), 8, seed=5, progress=False)
    assert np.array_equal(drawn.images.permute(0, 2, 3, 1).numpy(), np.load(out / "samples.npz")["images"])
    assert drawn.sampling.variance == "analytic" and drawn.sampling.sampler == "ddpm"
    if kind == "conditional":
        assert drawn.labels.tolist() == [k % 10 for k in range(8)] and drawn.sampling.guidance == 0.0
        assert generate(load_run(run), 2, labels="none", progress=False).labels is None  # the "no class" model


@pytest.mark.parametrize("fields, field", [
    ({"eta": 1.5}, "eta"), ({"eta": -0.1}, "eta"), ({"eta": 0.5, "sampler": "ddpm"}, "eta"),
    ({"sampler": "ddim", "variance": "fixed-large"}, "variance"), ({"variance": "wide"}, "variance"),
    ({"guidance": -1.0}, "guidance"), ({"guidance_interval": (5, 3), "guidance": 1.0}, "guidance_interval"),
    ({"guidance_interval": (2, 4), "guidance": 0.0}, "guidance_interval"), ({"steps": 0}, "steps"),
    ({"spacing": "cubic"}, "spacing"), ({"sampler": "euler"}, "sampler")])
def test_a_config_refuses_what_does_not_fit_in_one_line_that_names_the_field(fields, field):
    with pytest.raises(ValueError) as e:
        SamplingConfig(**fields)
    assert re.split(r"[ =:]", str(e.value))[0] == field and len(str(e.value).splitlines()) == 1


def test_the_default_is_filled_for_a_run_and_filling_it_again_changes_nothing(tiny_run, cond_run):
    run = load_run(tiny_run)
    T = run.schedule.num_timesteps
    concrete = SamplingConfig().for_run(run)
    assert dataclasses.asdict(concrete) == {"sampler": "ddpm", "steps": min(100, T), "spacing": "uniform",
                                            "variance": "analytic", "eta": 0.0, "guidance": 0.0,
                                            "guidance_interval": None, "clip_denoised": True}
    assert concrete.for_run(run) == concrete
    assert T < REGISTRY["ddim"].steps  # the tiny run: a sampler's own default beyond T is refused, as asked steps are
    with pytest.raises(ValueError, match=rf"^steps .* default is {REGISTRY['ddim'].steps}; pass steps={T} or fewer"):
        SamplingConfig(sampler="ddim").for_run(run)
    with pytest.raises(ValueError, match=r"^steps must lie in \[1, "):
        SamplingConfig(steps=T + 1).for_run(run)
    with pytest.raises(ValueError, match="^guidance: .* unconditional"):
        SamplingConfig(guidance=1.0).for_run(run)
    cond = load_run(cond_run)
    assert SamplingConfig().for_run(cond).guidance == 0.0                      # every class in turn: w = 0
    assert SamplingConfig().for_run(cond, classes_asked=True).guidance == 1.0  # a class asked for: w = 1
    with pytest.raises(ValueError, match="^guidance_interval=1-21 must lie within the run's t"):
        SamplingConfig(guidance=1.0, guidance_interval=(1, T + 1)).for_run(cond)


def test_the_command_line_shows_the_configs_error_as_its_flag_exit_2(tiny_run, capsys):
    for flags, start in ((["--eta", "2", "--sampler", "ddim"], "--eta must lie in [0, 1]"),
                         (["--eta", "0.5"], "--eta applies to --sampler ddim only"),
                         (["--sampler", "dpm++2m", "--variance", "fixed-small"], "--variance fixed-small sets"),
                         (["--guidance-interval", "2-4"], "--guidance-interval 2-4: "),
                         (["--steps", "999"], "--steps must lie in [1, ")):
        capsys.readouterr()
        assert main(["sample", str(tiny_run), "-n", "1", "--no-progress", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert start in err and len(err.splitlines()) == 1, err


def test_a_sampler_is_one_function_and_one_entry(tiny_run, monkeypatch):
    """A registry entry is all a new sampler needs: the config takes its name, its default steps and its eta."""
    calls = []

    def draw_mine(model, schedule, noise, shape, **kw):
        calls.append(kw["steps"])
        return draw_ddim(model, schedule, noise, shape, **kw)
    monkeypatch.setitem(REGISTRY, "mine", SamplerSpec(draw_mine, 3, "uniform", True, False, "DDIM under a name"))
    run = load_run(tiny_run)
    mine = generate(run, 2, SamplingConfig(sampler="mine", eta=0.5), progress=False)
    ddim = generate(run, 2, SamplingConfig(sampler="ddim", steps=3, eta=0.5), progress=False)
    assert calls == [3] and torch.equal(mine.images, ddim.images) and mine.sampling.steps == 3
    with pytest.raises(ValueError, match="sampler must be one of ddpm, ddim, dpm\\+\\+2m, mine"):
        run_sampler(None, run.schedule, None, (1, 8, 8), sampler="euler")


def test_old_keywords_build_the_config_and_not_both(tiny_run):
    run = load_run(tiny_run)
    a = generate(run, 2, sampler="ddim", steps=3, progress=False).images
    assert torch.equal(a, generate(run, 2, SamplingConfig(sampler="ddim", steps=3), progress=False).images)
    with pytest.raises(TypeError, match="not both"):
        generate(run, 2, SamplingConfig(), steps=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sampler_kw'"):
        generate(run, 2, sampler_kw=1)


def test_a_class_is_read_by_name_first_then_by_index():
    names = ["cat", "dog", "0"]
    assert parse_class(names, "dog") == 1 and parse_class(names, "0") == 2 and parse_class(names, "1") == 1
    assert parse_class(names, 0) == 0  # an int is an index
    with pytest.raises(ValueError, match="^class 3: not a class of this run; its classes are cat, dog, 0"):
        parse_class(names, "3")


def test_the_network_is_always_called_with_x_t_and_y():
    seen = []

    class Net(torch.nn.Module):
        def forward(self, x, t, y):
            seen.append(y)
            return x
    f = model_fn(Net(), torch.device("cpu"))
    f(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long))
    f(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long))
    assert seen[0] is None and seen[1].tolist() == [1]


def test_the_readmes_ddpm_sample_with_old_keywords_still_draws(tiny_run, tmp_path):
    """`ddpm.sample(run_dir, n=16, sampler="ddim", steps=50)` of the README: the keywords build the config, which
    samples.json records with its fields."""
    import json

    import ddpm
    out = ddpm.sample(tiny_run, n=2, out_dir=tmp_path / "s", sampler="ddim", steps=3, seed=4, progress=False)
    record = json.loads((out / "samples.json").read_text())
    assert [record[k] for k in ("sampler", "steps", "seed", "n")] == ["ddim", 3, 4, 2]
    want = generate(load_run(tiny_run), 2, SamplingConfig(sampler="ddim", steps=3), seed=4, progress=False).images
    assert np.array_equal(np.load(out / "samples.npz")["images"], want.permute(0, 2, 3, 1).numpy())
