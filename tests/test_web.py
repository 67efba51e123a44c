"""The page of `ddpm serve`: its actions on a tiny run (ddpm.web.page, no web needed), then the real server on a
free local port driven through gradio_client (skipped without the `web` extra), and `ddpm serve`'s own errors."""
import socket

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from ddpm.cli.main import main
from ddpm.data.embedded import sklearn_digits_split
from ddpm.web.page import DRAWN, Page, PageError, Update, class_choices, num_classes

# gradio's queue estimates waiting times with pandas and trips pandas 3's deprecation warnings (nothing of ours)
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory):
    return Page(tiny_run, device="cpu", workdir=tmp_path_factory.mktemp("downloads"), min_interval=0.0)


def _digit(k=0, scale=1) -> np.ndarray:
    a = sklearn_digits_split("test")[0][k, 0].numpy()
    return np.kron(a, np.ones((scale, scale), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ the page itself

def test_a_class_conditional_run_generates_the_class_chosen_by_name(tmp_path):
    """The Class control names the run's classes; the page draws what generate() draws for those labels and w."""
    from ddpm.sampling.generate import generate
    run_dir = tmp_path / "cond"
    assert main(["train", *TINY, "--class-cond", "--run-dir", str(run_dir), "--steps", "2"]) == 0
    page = Page(run_dir, device="cpu", workdir=tmp_path / "dl", min_interval=0.0)
    assert num_classes(page.run) == 10 and class_choices(page.run) == ["any", *map(str, range(10))]
    assert page._labels("7", 3) == [7, 7, 7] and page._labels(7, 3) == [7, 7, 7] and page._labels("any", 12) is None
    npz = list(page.generate("ddim", 4, 0.0, 5, 3, every=100, label="7", guidance=1.5))[-1].files[1]
    want = generate(page.run, 3, seed=5, batch_size=3, sampler="ddim", steps=4, labels=7, guidance=1.5).images
    assert np.array_equal(np.load(npz)["images"], want.permute(0, 2, 3, 1).numpy())
    with pytest.raises(PageError, match="class must be one of"):
        page._labels("11", 3)
    with pytest.raises(PageError, match="^guidance w must be"):
        list(page.generate("ddim", 4, 0.0, 5, 3, label="7", guidance=-1.0))
    # untouched controls draw what ddpm sample draws: every class in turn, w = 0, the default sampler
    npz = list(page.generate(n=12, every=100))[-1].files[1]
    want = generate(page.run, 12, seed=0, batch_size=12)
    assert want.labels.tolist() == [*range(10), 0, 1] and want.sampling.guidance == 0.0
    assert np.array_equal(np.load(npz)["images"], want.images.permute(0, 2, 3, 1).numpy())


def test_generate_streams_x_t_and_x0_then_files(page):
    updates = list(page.generate("ddim", 10, 0.0, 3, 4, every=2))
    assert all(isinstance(u, Update) and u.picture.dtype == np.uint8 and u.picture.ndim == 3 for u in updates)
    assert [u.done for u in updates] == [0, 2, 4, 6, 8, 10] and "t = " in updates[0].text
    assert [u.done for u in updates] == sorted(u.done for u in updates) and updates[-1].done == updates[-1].total == 10
    grid, npz = updates[-1].files
    assert np.load(npz)["images"].shape == (4, 8, 8, 1) and Image.open(grid).size == (22, 22)
    # deterministic for a fixed seed, and the same images as the library's generate
    again = list(page.generate("ddim", 10, 0.0, 3, 4, every=100))[-1].files[1]
    assert np.array_equal(np.load(npz)["images"], np.load(again)["images"])
    assert num_classes(page.run) == 0 and page._labels("7", 4) is None


def test_forward_shows_abar_and_snr_and_denoise_starts_there(page):
    picture, text = page.forward(_digit(), 10, seed=1)
    abar = float(page.run.schedule.alpha_bars[9])
    assert f"abar_t = {abar:.4g}" in text and "signal-to-noise ratio" in text and picture.dtype == np.uint8
    assert "infinite" in page.forward(_digit(scale=8), 0)[1]   # a 64x64 drawing is averaged down to 8x8
    updates = list(page.denoise(_digit(), 10, seed=1, sampler="ddpm", every=3))
    assert updates[-1].done == 10 and np.load(updates[-1].files[1])["images"].shape == (1, 8, 8, 1)
    zero = list(page.denoise(_digit(), 0))[-1]
    assert np.array_equal(np.load(zero.files[1])["images"][0, ..., 0], _digit())  # t = 0 changes nothing


def test_inpaint_keeps_the_unpainted_pixels(page):
    painted = np.zeros((64, 64), np.uint8)
    painted[32:] = 255                                            # the bottom half, painted on the 8x canvas
    last = list(page.inpaint(_digit(scale=8), DRAWN, painted, seed=0, n=2, steps=10, jump_length=2, resample=2))[-1]
    out = np.load(last.files[1])["images"][..., 0]
    assert out.shape == (2, 8, 8) and (out[:, :4] == _digit()[:4]).all()
    half = list(page.inpaint(_digit(), "top", None, steps=5, resample=1))[-1]
    assert (np.load(half.files[1])["images"][0, 4:, :, 0] == _digit()[4:]).all()


@pytest.mark.parametrize("call, message", [
    (lambda p: p.forward(np.zeros((9, 9), np.uint8), 5), "the picture is 9x9; the run makes 8x8 images"),
    (lambda p: p.forward(np.zeros((8, 8, 3), np.uint8) + np.uint8([255, 0, 0]), 5), "is in colour"),
    (lambda p: p.forward(None, 5), "Upload or draw a picture first"),
    (lambda p: p.forward(_digit(), 21), "t must lie in 0..20"),
    (lambda p: list(p.inpaint(_digit(), DRAWN, np.zeros((8, 8), np.uint8))), "The mask is empty"),
    (lambda p: list(p.inpaint(_digit(), DRAWN, None)), "The mask is empty"),
    (lambda p: list(p.inpaint(_digit(), "top", None, steps=5, jump_length=5, resample=2)), "leaves no room"),
    (lambda p: list(p.generate("ddpm", 10, 0.5)), "eta applies to sampler=ddim only"),
    (lambda p: p.held_out(10_000), "held-out images 10000-10000"),
])
def test_mistakes_are_one_line_page_errors(page, call, message):
    with pytest.raises(PageError, match=message) as caught:
        call(page)
    assert "\n" not in str(caught.value)


def test_a_run_that_does_not_load_leaves_the_current_one(page, tmp_path):
    before = page.run
    for bad in (tmp_path / "absent", tmp_path, ""):
        with pytest.raises(PageError):
            page.load(bad)
        assert page.run is before
    assert "T = 20" in page.load(before.checkpoint)


def test_a_closed_stream_stops_its_worker(page):
    updates = page.generate("ddpm", None, 0.0, 0, 2, every=1)
    next(updates)
    updates.close()                                                # the browser went away
    assert list(page.generate("ddim", 4, 0.0, 0, 2))[-1].done == 4  # and the page still works


# -------------------------------------------------------------------------------------- the real server

@pytest.fixture(scope="module")
def client(page, tmp_path_factory):
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from ddpm.web.app import build_app, close, launch
    app = build_app(page)
    _, url, _ = launch(app, "127.0.0.1", None, block=False)
    c = gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("client")))
    yield c
    c.close()
    close(app)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    Image.fromarray(_digit(scale=8)).save(d / "digit.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(d / "nine.png")
    stroke = np.zeros((64, 64, 4), np.uint8)
    stroke[32:] = (255, 48, 48, 255)                               # a stroke over the bottom half
    Image.fromarray(stroke, "RGBA").save(d / "stroke.png")
    return d


def _editor(picture, layers=()):
    from gradio_client import handle_file
    return {"background": handle_file(str(picture)), "layers": [handle_file(str(p)) for p in layers],
            "composite": handle_file(str(picture))}


def test_server_generates_live(client):
    job = client.submit("ddim", 10, 0.0, 0, 4, 2, "any", 1.0, api_name="/generate")
    job.result()
    outputs = job.outputs()
    assert len(outputs) >= 3 and outputs[0][2] is None and "step" in outputs[0][1]
    picture, text, files = outputs[-1]
    assert text.startswith("done") and np.load([f for f in files if f.endswith(".npz")][0])["images"].shape == \
        (4, 8, 8, 1)
    assert np.asarray(Image.open(picture)).ndim == 3


def test_server_noises_denoises_and_inpaints(client, files):
    picture, text = client.predict(_editor(files / "digit.png"), 10, 0, api_name="/forward")
    assert "abar_t" in text and Image.open(picture).size[0] > 64
    job = client.submit(_editor(files / "digit.png"), 10, 0, "ddim", 5, 2, api_name="/denoise")
    job.result()
    assert job.outputs()[-1][1].startswith("done: denoised from t = 10")
    job = client.submit(_editor(files / "digit.png", [files / "stroke.png"]), DRAWN, 0, 2, 10, 2, 2, 4,
                        api_name="/inpaint")
    job.result()
    npz = [f for f in job.outputs()[-1][2] if f.endswith(".npz")][0]
    assert (np.load(npz)["images"][:, :4, :, 0] == _digit()[:4]).all()


def test_server_shows_bad_input_as_a_message_and_keeps_serving(client, files):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="the picture is 9x9; the run makes 8x8 images"):
        client.predict(_editor(files / "nine.png"), 10, 0, api_name="/forward")
    with pytest.raises(AppError, match="The mask is empty"):
        client.predict(_editor(files / "digit.png"), DRAWN, 0, 1, 5, 2, 1, 4, api_name="/inpaint")
    with pytest.raises(AppError, match="could not load the run"):
        client.predict("no/such/run", api_name="/load_run")
    assert "abar_t" in client.predict(_editor(files / "digit.png"), 5, 0, api_name="/forward")[1]


# ------------------------------------------------------------------------------------------- ddpm serve

def test_serve_without_gradio_says_how_to_install_it(tiny_run, monkeypatch, capsys):
    monkeypatch.setattr("ddpm.web.app.importlib.util.find_spec", lambda name: None)
    assert main(["serve", str(tiny_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ddpm[web]'" in err


def test_serve_refuses_a_busy_port_before_loading(monkeypatch, capsys):
    monkeypatch.setattr("ddpm.cli.serve.check_gradio", lambda: None)
    monkeypatch.setattr("ddpm.cli.serve.load_run", lambda *a, **k: pytest.fail("loaded before the checks"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "RUN", "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already in use" in err and "--port 0" in err
