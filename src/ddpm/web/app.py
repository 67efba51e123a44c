"""The Gradio page of ``ddpm serve``: the layout, and each button wired to a :class:`~ddpm.web.page.Page` method.

Gradio is the optional extra ``ddpm[web]`` (Python 3.10+), imported only when a page is built, so the rest of
ddpm never needs it.  Every event that runs the network shares one queue slot (``concurrency_id="model"``): two
visitors never sample at once on the same cores.  Mistakes come back as :class:`~ddpm.web.page.PageError` and are
shown as an error message on the page (``gr.Error``); anything unexpected is shown as one line too, and the
server keeps serving.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import socket
from pathlib import Path

import numpy as np

from ..core.samplers import REGISTRY
from ..sampling.config import SamplingConfig
from ..sampling.defaults import DEFAULT_ANALYTIC_STEPS, DEFAULT_GUIDANCE
from ..sampling.edit import INPAINT_DEFAULTS
from .page import DRAWN, MASK_CHOICES, Page, PageError, class_choices, num_classes

__all__ = ["WebUnavailable", "GRADIO_REQUIREMENT", "check_gradio", "build_app", "launch", "close", "free_port"]

GRADIO_REQUIREMENT = "pip install 'ddpm[web]'"

#: set before gradio is imported: no version checks or telemetry, nothing leaves the machine
_OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}

_CSS = "#gen-out img, #fwd-out img, #den-out img, #inp-out img { image-rendering: pixelated; }"


class WebUnavailable(Exception):
    """Gradio is not installed (or this Python is too old for it); the message says how to install it."""


def _gradio():
    """The gradio module, after switching off its network calls."""
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        import gradio  # optional extra ddpm[web], heavy (2-5 s): imported only to build a page
    except ImportError as e:
        raise WebUnavailable(f"the web page needs gradio, which is not installed ({e}); install it with: "
                             f"{GRADIO_REQUIREMENT} (Python 3.10 or newer)") from None
    return gradio


def check_gradio() -> None:
    """Raise :class:`WebUnavailable` unless gradio can be imported (cheap: finds it without importing it)."""
    if importlib.util.find_spec("gradio") is None:
        raise WebUnavailable(f"the web page needs gradio, which is not installed; install it with: "
                             f"{GRADIO_REQUIREMENT} (Python 3.10 or newer)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _shown(gr, fn):
    """Wrap a handler (plain or generator) so that every exception reaches the page as one line (gr.Error)."""
    def message(e: Exception):
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, PageError):  # the user's mistake: no traceback on the server's console either
            return gr.Error(str(e), print_exception=False)
        return gr.Error(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'failed'}")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streamed(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise message(e) from None
        return streamed

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise message(e) from None
    return plain


def _editor_picture(value, part: str = "composite"):
    """The picture in an ImageEditor value: the composite (background with strokes) or the background alone."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    picture = value.get(part)
    if picture is None and part == "composite":
        picture = value.get("background")
    return picture


def _painted(value):
    """What was painted on an ImageEditor: uint8 (H, W), 255 where any layer's stroke is (alpha > 0)."""
    if not isinstance(value, dict):
        return None
    layers = [np.asarray(layer) for layer in value.get("layers") or [] if layer is not None]
    layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4]
    if not layers:
        return None
    shape = layers[0].shape[:2]
    if any(layer.shape[:2] != shape for layer in layers):
        raise PageError("the painted layers differ in size; clear the mask and paint again")
    return (np.any([layer[..., 3] > 0 for layer in layers], axis=0) * 255).astype(np.uint8)


def build_app(page: Page):
    """The page's ``gr.Blocks``: a run box and three tabs (Generate; Forward process and SDEdit; Inpaint)."""
    gr = _gradio()
    T, size = page.T, page.size
    canvas = (8 * size, 8 * size)

    def picture_input(label: str, brush: str, prefix: str):
        """A picture to upload or draw on (with a brush of one colour), and the row that loads a held-out digit into
        it: (editor, digit number, load button), their element ids starting with ``prefix``."""
        editor = gr.ImageEditor(label=label, type="numpy", image_mode="RGBA", format="png",
                                sources=["upload", "clipboard"], canvas_size=canvas, layers=False, transforms=(),
                                brush=gr.Brush(colors=[brush], color_mode="fixed", default_size=max(2, size // 2)),
                                elem_id=f"{prefix}-in")
        with gr.Row():
            index = gr.Number(0, precision=0, label="Held-out digit #", minimum=0)
            load = gr.Button("Load held-out digit", elem_id=f"{prefix}-load")
        return editor, index, load

    def progress_of(progress, update):
        progress((update.done, update.total), desc=update.text)

    # ------------------------------------------------------------------------------------------ handlers
    def load_run(path):
        text = page.load(path)
        k = num_classes(page.run)
        return (text, gr.update(visible=k > 0, choices=class_choices(page.run), value="any"),
                gr.update(visible=k > 0), gr.update(maximum=page.T), gr.update(maximum=page.T))

    def held_out(index):
        return page.held_out(index)

    def forward(value, t, seed):
        return page.forward(_editor_picture(value), t, seed)

    def forward_if_any(value, t, seed):  # moving the slider before there is a picture is no mistake
        if _editor_picture(value) is None:
            return gr.update(), gr.update()
        return forward(value, t, seed)

    def denoise(value, t, seed, sampler, steps, every, progress=gr.Progress()):
        for update in page.denoise(_editor_picture(value), t, seed, sampler, steps, every):
            progress_of(progress, update)
            yield update.picture, update.text, update.files

    def inpaint(value, mask_choice, seed, n, steps, jump_length, resample, every, progress=gr.Progress()):
        picture = _editor_picture(value, "background")
        for update in page.inpaint(picture, mask_choice, _painted(value), seed, n, steps, jump_length, resample,
                                   every):
            progress_of(progress, update)
            yield update.picture, update.text, update.files

    model = dict(concurrency_id="model", concurrency_limit=1)

    # ------------------------------------------------------------------------------------------- layout
    with gr.Blocks(title="ddpm: watch and steer diffusion", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Denoising diffusion, step by step\nNoise turning into digits (Generate), a digit turning "
                    "into noise (the forward process) and back (SDEdit), and half a digit finished by the model "
                    "(RePaint).")
        with gr.Row():
            run_path = gr.Textbox(value=str(Path(page.run.checkpoint).parent.parent), label="Run folder", scale=3,
                                  elem_id="run-path")
            load_btn = gr.Button("Load run", scale=1, elem_id="load-btn")
        run_info = gr.Markdown(page.describe(), elem_id="run-info")

        label, guidance, steps = _generate_tab(gr, page, model, progress_of)

        with gr.Tab("Forward process and SDEdit", elem_id="tab-forward"):
            gr.Markdown("Upload or draw a picture (white on black), or load a held-out digit; pick t to see "
                        "x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, then denoise it back from t (SDEdit, "
                        "Meng et al. 2022): the larger t, the more the model redraws.")
            with gr.Row():
                with gr.Column(scale=1):
                    fwd_in, fwd_index, fwd_load = picture_input(
                        f"Picture ({size}x{size}, or {canvas[0]}x{canvas[1]} drawn)", "#ffffff", "fwd")
                with gr.Column(scale=2):
                    t = gr.Slider(0, T, value=T // 4, step=1, label="t", elem_id="fwd-t")
                    fwd_seed = gr.Number(0, precision=0, label="Seed (of eps and of the denoising)")
                    with gr.Row():
                        fwd_btn = gr.Button("Add noise to t", elem_id="fwd-btn")
                        den_btn = gr.Button("Denoise from t (SDEdit)", variant="primary", elem_id="den-btn")
                    with gr.Accordion("Denoising settings", open=False):
                        den_sampler = gr.Dropdown(list(REGISTRY), value="ddpm", label="Sampler")
                        den_steps = gr.Slider(0, T, value=0, step=1, label="Steps (0 = one per time step)")
                        den_every = gr.Slider(1, 50, value=5, step=1, label="Show the picture every N steps")
                    fwd_out = gr.Image(label="x_0, x_t, and the denoising", show_label=False, type="numpy",
                                       format="png", interactive=False, elem_id="fwd-out")
                    fwd_text = gr.Textbox(label="abar_t and the signal-to-noise ratio", interactive=False,
                                          elem_id="fwd-status")
                    den_files = gr.File(label="Download (PNG, .npz)", file_count="multiple", interactive=False)
            fwd_load.click(_shown(gr, held_out), fwd_index, fwd_in, api_name="held_out")
            fwd_btn.click(_shown(gr, forward), [fwd_in, t, fwd_seed], [fwd_out, fwd_text], api_name="forward",
                          **model)
            t.release(_shown(gr, forward_if_any), [fwd_in, t, fwd_seed], [fwd_out, fwd_text], api_name=False, **model)
            den_btn.click(_shown(gr, denoise), [fwd_in, t, fwd_seed, den_sampler, den_steps, den_every],
                          [fwd_out, fwd_text, den_files], api_name="denoise", show_progress_on=fwd_text, **model)

        with gr.Tab("Inpaint (RePaint)", elem_id="tab-inpaint"):
            gr.Markdown("Load or upload a picture, paint over the part the model should fill (or pick a half), and "
                        "inpaint: the known pixels are re-noised to each step's level, the rest comes from the model, "
                        "and every few steps the picture is noised back up and denoised again (RePaint, Lugmayr et "
                        "al. 2022).")
            with gr.Row():
                with gr.Column(scale=1):
                    inp_in, inp_index, inp_load = picture_input("Picture; paint the part to fill", "#ff3030", "inp")
                with gr.Column(scale=2):
                    mask_choice = gr.Radio(list(MASK_CHOICES), value=DRAWN, label="Part to fill")
                    with gr.Row():
                        inp_seed = gr.Number(0, precision=0, label="Seed")
                        inp_n = gr.Slider(1, 16, value=4, step=1, label="Completions")
                    with gr.Accordion("RePaint settings", open=False):
                        d = INPAINT_DEFAULTS
                        inp_steps = gr.Slider(1, T, value=min(d["steps"], T), step=1, label="Steps (respaced)")
                        inp_jump = gr.Slider(1, 50, value=d["jump_length"], step=1, label="Jump length j")
                        inp_resample = gr.Slider(1, 20, value=d["resample"], step=1,
                                                 label="Resample count r (1 = plain replacement)")
                        inp_every = gr.Slider(1, 100, value=10, step=1, label="Show the picture every N calls")
                    inp_btn = gr.Button("Inpaint", variant="primary", elem_id="inp-btn")
                    inp_out = gr.Image(label="Inpainting", show_label=False, type="numpy", format="png",
                                       interactive=False, elem_id="inp-out")
                    inp_text = gr.Textbox(label="Status", interactive=False, elem_id="inp-status")
                    inp_files = gr.File(label="Download (PNG grid, .npz)", file_count="multiple", interactive=False)
            inp_load.click(_shown(gr, held_out), inp_index, inp_in, api_name=False)
            inp_btn.click(_shown(gr, inpaint), [inp_in, mask_choice, inp_seed, inp_n, inp_steps, inp_jump,
                                                inp_resample, inp_every],
                          [inp_out, inp_text, inp_files], api_name="inpaint", show_progress_on=inp_text, **model)

        load_btn.click(_shown(gr, load_run), run_path, [run_info, label, guidance, steps, t], api_name="load_run",
                       **model)
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def _generate_tab(gr, page: Page, model: dict, progress_of):
    """The Generate tab, its controls and defaults built from :class:`~ddpm.sampling.config.SamplingConfig` and the
    sampler registry, so that it draws what ``ddpm sample`` draws until a control is moved.  Returns the controls
    a newly loaded run updates: (class, guidance, steps)."""
    T, k, default = page.T, num_classes(page.run), SamplingConfig()
    takes_eta = [name for name, spec in REGISTRY.items() if spec.takes_eta]

    def generate(sampler, steps, eta, seed, n, every, label, guidance, progress=gr.Progress()):
        for update in page.generate(sampler, steps, eta, seed, n, every, label, guidance):
            progress_of(progress, update)
            yield update.picture, update.text, update.files

    def sampler_changed(sampler):
        return gr.update(visible=sampler in takes_eta, value=default.eta)

    def label_changed(label):  # a class asked for is guided (w = 1); every class in turn is not (w = 0)
        return gr.update(value=0.0 if label in (None, "", "any") else DEFAULT_GUIDANCE)

    with gr.Tab("Generate", elem_id="tab-generate"):
        with gr.Row():
            with gr.Column(scale=1):
                sampler = gr.Dropdown(list(REGISTRY), value=default.sampler, label="Sampler", elem_id="gen-sampler",
                                      info="; ".join(f"{name} = {spec.about}" for name, spec in REGISTRY.items()))
                steps = gr.Slider(0, T, value=0, step=1, elem_id="gen-steps",
                                  label=f"Steps (0 = the default: {DEFAULT_ANALYTIC_STEPS} for ddpm with the analytic "
                                        "variance, else the sampler's own)")
                eta = gr.Slider(0.0, 1.0, value=default.eta, step=0.05, visible=default.sampler in takes_eta,
                                label="eta (DDIM noise; 0 = deterministic)")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="gen-seed")
                n = gr.Slider(1, 64, value=16, step=1, label="Number of images", elem_id="gen-n")
                every = gr.Slider(1, 50, value=5, step=1, label="Show the picture every N steps")
                # class-conditional runs only (hidden otherwise): see ddpm.web.page.num_classes
                label = gr.Dropdown(class_choices(page.run), value="any", label="Class (any: every class in turn)",
                                    visible=k > 0)
                guidance = gr.Slider(0.0, 8.0, value=0.0, step=0.5, visible=k > 0,
                                     label="Guidance w (0: purely conditional; other libraries' scale is 1 + w)")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            with gr.Column(scale=2):
                gen_out = gr.Image(label="x_t and the predicted x_0 while sampling; the samples at the end",
                                   show_label=False, type="numpy", format="png", interactive=False, elem_id="gen-out")
                gen_text = gr.Textbox(label="Status", interactive=False, elem_id="gen-status")
                gen_files = gr.File(label="Download (PNG grid, .npz)", file_count="multiple", interactive=False,
                                    elem_id="gen-file")
        sampler.change(sampler_changed, sampler, eta, api_name=False, queue=False)
        label.change(label_changed, label, guidance, api_name=False, queue=False)
        gen_btn.click(_shown(gr, generate), [sampler, steps, eta, seed, n, every, label, guidance],
                      [gen_out, gen_text, gen_files], api_name="generate", show_progress_on=gen_text, **model)
    return label, guidance, steps


def launch(app, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the page on ``host:port`` (None: a free port); returns gradio's (app, local_url, share_url).
    ``block``: serve until Ctrl-C; otherwise return at once and leave the server in a daemon thread
    (stop it with :func:`close`)."""
    gr = _gradio()  # noqa: F841 (sets the offline switches before gradio's launch reads them)
    return app.launch(server_name=host, server_port=port or free_port(host), prevent_thread_lock=not block,
                      share=False, quiet=True, show_error=True, max_file_size="20mb", footer_links=["api"],
                      ssr_mode=False, enable_monitoring=False, css=_CSS, inbrowser=False)


def close(app) -> None:
    """Stop a server started with ``block=False``: open live updates get one second to end, not gradio's five."""
    server = getattr(app, "server", None)
    if server is not None:
        server.config.timeout_graceful_shutdown = 1
    app.close(verbose=False)
