"""What the web page does, without the web: each action of ``ddpm serve``'s page as a method of :class:`Page`.

The page is a thin layer over the library: Generate calls :func:`ddpm.sampling.generate.generate`, the forward
process :func:`ddpm.sampling.edit.noised`, Denoise from t :func:`~ddpm.sampling.edit.edit` (SDEdit) and Inpaint
:func:`~ddpm.sampling.edit.inpaint` (RePaint).  The long actions are generators of :class:`Update` s: the library
call runs in a worker thread and its ``on_step`` observer hands every few steps' x_t and predicted x_0 over, so the
page can show the picture forming.  Closing the generator (the browser went away) stops the worker at its next step.

Every mistake (a picture of the wrong size or colour, an empty mask, a run that does not load) raises
:class:`PageError`, one line the page shows as a message; the run loaded before stays loaded.
"""
from __future__ import annotations

import math
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..core.editing import alpha_bar
from ..core.samplers import Step
from ..data.datasets import DataError, to_uint8
from ..data.files import to_nhwc
from ..runs.checkpoint import CheckpointError
from ..runs.images import make_grid, save_grid, save_npz
from ..sampling.config import SamplingConfig, parse_class
from ..sampling.edit import (
    MASK_HALVES,
    ImageError,
    edit,
    fit_images,
    fit_mask,
    half_mask,
    held_out,
    held_out_images,
    inpaint,
    inpaint_calls,
    inpaint_settings,
    noised,
)
from ..sampling.generate import LoadedRun, generate, load_run

__all__ = ["PageError", "Update", "Page", "num_classes", "side_by_side", "MASK_CHOICES", "DRAWN",
           "SHOWN_WIDTH", "class_choices"]

#: the mask choice that takes what was painted on the picture; the others are the halves of :data:`MASK_HALVES`
DRAWN = "what I painted"
MASK_CHOICES = (DRAWN, *MASK_HALVES)

#: width in pixels the page shows one grid at (whole-number nearest-neighbour enlargement)
SHOWN_WIDTH = 320


class PageError(Exception):
    """A mistake on the page; the message is one line for the user."""


@dataclass
class Update:
    """One step of a long action: the picture to show, a status line, how far it is (``done`` of ``total``
    network calls), and at the end the files to download."""

    picture: np.ndarray
    text: str
    done: int
    total: int
    files: list[str] | None = None


def num_classes(run: LoadedRun) -> int:
    """How many classes a class-conditional run was trained on, 0 for an unconditional one: the Generate tab shows
    its class and guidance controls only when this is positive, and :meth:`Page.generate` passes them on only then."""
    return run.config.model.num_classes


def class_choices(run: LoadedRun) -> list[str]:
    """The Class control's choices: "any" (the classes in turn), then the run's class names."""
    return ["any", *(run.class_names or ())]


# ------------------------------------------------------------------------------------------------ pictures

def _font():
    return ImageFont.load_default()


def _enlarged(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    grid = make_grid(images, nrow=nrow)
    scale = max(1, SHOWN_WIDTH // grid.width)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).convert("RGB")


def side_by_side(panels: list[tuple[str, torch.Tensor | None]], nrow: int | None = None) -> np.ndarray:
    """Grids of image batches next to each other, each under its title, as one uint8 (H, W, 3) picture.

    panels: (title, images) with images uint8 (N, C, H, W) or float in [-1, 1] (clamped), or None for an empty
    panel of the same size as the first."""
    grids = []
    for title, images in panels:
        if images is not None and images.is_floating_point():
            images = to_uint8(images.detach().float().clamp(-1, 1).cpu())
        grids.append((title, _enlarged(images.cpu(), nrow) if images is not None else None))
    size = next(g.size for _, g in grids if g is not None)
    font, gap, top = _font(), 12, 18
    out = Image.new("RGB", (len(grids) * size[0] + (len(grids) - 1) * gap, size[1] + top), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for k, (title, grid) in enumerate(grids):
        left = k * (size[0] + gap)
        out.paste(grid if grid is not None else Image.new("RGB", size, (235, 235, 235)), (left, top))
        draw.text((left + 2, 3), title, fill=(0, 0, 0), font=font)
    return np.asarray(out)


# --------------------------------------------------------------------------------------- the worker thread

class _Stopped(Exception):
    """Raised inside the worker when the page stopped listening."""


def _stream(work: Callable[[Callable[[Step], None]], object], total: int, every: int,
            show: Callable[[Step, int], Update], min_interval: float = 0.1) -> Iterator[Update | object]:
    """Run ``work(on_step)`` in a thread; yield ``show(step, done)`` for the first step and then every ``every``
    network calls, at most one per ``min_interval`` seconds (a picture costs the page about 50 ms), then work's
    result."""
    events: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    state = {"done": 0, "last": 0.0}

    def on_step(step: Step) -> None:
        if stop.is_set():
            raise _Stopped
        if step.x0 is not None:
            state["done"] += 1
        now = time.monotonic()
        first = step.x0 is None and state["done"] == 0
        if first or (state["done"] % every == 0 and now - state["last"] >= min_interval and state["done"] < total):
            state["last"] = now
            update = show(step, state["done"])
            while not stop.is_set():
                try:
                    events.put(("update", update), timeout=0.1)
                    break
                except queue.Full:
                    continue

    def run() -> None:
        try:
            result = ("result", work(on_step))
        except _Stopped:
            return
        except BaseException as e:  # handed to the page's thread, which shows it
            result = ("error", e)
        while not stop.is_set():
            try:
                events.put(result, timeout=0.1)
                return
            except queue.Full:
                continue

    worker = threading.Thread(target=run, name="ddpm-page-worker", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "update":
                yield value
            elif kind == "error":
                raise value
            else:
                yield value
                return
    finally:
        stop.set()
        worker.join(timeout=30)


# ---------------------------------------------------------------------------------------------- the page

def _as_error(e: Exception) -> PageError:
    return PageError(str(e).splitlines()[0] if str(e) else type(e).__name__)


class Page:
    """The state behind the page: the loaded run (one for every visitor; the page is a local tool) and a scratch
    folder for downloads.  ``run``: a :class:`~ddpm.sampling.generate.LoadedRun` or a run folder to load.
    ``min_interval``: the least time between two live pictures, in seconds."""

    def __init__(self, run, *, device: str = "auto", workdir: str | Path | None = None, min_interval: float = 0.1):
        self.device, self.min_interval = device, min_interval
        self.run: LoadedRun = run if isinstance(run, LoadedRun) else self._load(run)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ddpm-page-"))
        self._downloads = 0
        self._test: tuple[LoadedRun, torch.Tensor] | None = None  # the run's held-out images, once loaded

    # ------------------------------------------------------------------------------------------- the run
    def _load(self, path) -> LoadedRun:
        if not str(path).strip():
            raise PageError("Name a run folder to load, e.g. runs/digits")
        try:
            return load_run(str(path).strip(), device=self.device)
        except (CheckpointError, DataError, ValueError, OSError) as e:
            raise PageError(f"could not load the run: {_as_error(e)}") from None

    def load(self, path) -> str:
        """Switch to another run folder; on failure the current run stays.  Returns :meth:`describe`."""
        self.run = self._load(path)
        return self.describe()

    @property
    def size(self) -> int:
        return self.run.config.model.image_size

    @property
    def channels(self) -> int:
        return self.run.config.model.in_channels

    @property
    def T(self) -> int:
        return self.run.schedule.num_timesteps

    def describe(self) -> str:
        cfg = self.run.config
        kind = f"class-conditional, {num_classes(self.run)} classes" if num_classes(self.run) else "unconditional"
        colour = "grey" if self.channels == 1 else "RGB"
        return (f"**{self.run.checkpoint}** ({self.run.weights} weights): {self.size}x{self.size} {colour} images "
                f"of {cfg.data.source}, T = {self.T} ({cfg.schedule.kind} schedule), {kind}, on {self.run.device}")

    def held_out(self, index: int) -> np.ndarray:
        """Held-out image ``index`` of the run's embedded dataset, enlarged 8 times, as an RGB picture to edit."""
        try:
            if self._test is None or self._test[0] is not self.run:
                self._test = (self.run, held_out_images(self.run))
            image = held_out(self.run, int(index), images=self._test[1])
        except ImageError as e:
            raise PageError(str(e)) from None
        a = image[0].permute(1, 2, 0).numpy()
        a = np.repeat(np.repeat(a, 8, axis=0), 8, axis=1)
        return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a

    # ------------------------------------------------------------------------------------------ pictures
    def picture(self, picture) -> torch.Tensor:
        """An uploaded or drawn picture (uint8 (H, W[, C])) as the run takes it, uint8 (1, C, H, W)."""
        if picture is None:
            raise PageError("Upload or draw a picture first (or load a held-out digit)")
        try:
            return fit_images(to_nhwc(picture, "the picture"), self.channels, self.size, what="the picture")
        except (ImageError, DataError) as e:
            raise PageError(str(e)) from None

    def mask(self, choice: str, painted) -> torch.Tensor:
        """bool (1, 1, H, W): the painted strokes (uint8 (H, W), nonzero = painted) or a named half."""
        try:
            if choice != DRAWN:
                return half_mask(choice, self.size)
            if painted is None or not np.asarray(painted).any():
                raise PageError("The mask is empty: paint over the part to fill in, or choose a half")
            return fit_mask(to_nhwc(np.asarray(painted, dtype=np.uint8), "the mask"), self.size, what="the mask")
        except (ImageError, DataError) as e:
            raise PageError(str(e)) from None

    def _t(self, t) -> int:
        t = int(t)
        if not 0 <= t <= self.T:
            raise PageError(f"t must lie in 0..{self.T} (this run's T), got {t}")
        return t

    def _downloads_folder(self) -> Path:
        self._downloads += 1
        folder = self.workdir / f"{self._downloads:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _files(self, images: torch.Tensor, name: str) -> list[str]:
        folder = self._downloads_folder()
        return [str(save_grid(folder / f"{name}.png", images)), str(save_npz(folder / f"{name}.npz", images))]

    # ------------------------------------------------------------------------------------------ actions
    def generate(self, sampler: str = SamplingConfig.sampler, steps: int | None = SamplingConfig.steps,
                 eta: float = SamplingConfig.eta, seed: int = 0, n: int = 16, every: int = 5, label: str | None = None,
                 guidance: float | None = SamplingConfig.guidance) -> Iterator[Update]:
        """Draw ``n`` images as ``ddpm sample`` does (:class:`~ddpm.sampling.config.SamplingConfig`; ``steps`` 0 or
        None: the default); every ``every`` steps an :class:`Update` with x_t and the predicted x_0 side by side,
        then the final grid with grid.png and samples.npz to download.  ``label``: "any" or None (every class in
        turn), a class name of the run or its index; ``guidance``: w (None: the default; ignored for an
        unconditional run)."""
        n, seed, every = int(n), int(seed), max(1, int(every))
        labels = self._labels(label, n)
        w = None if guidance is None or not num_classes(self.run) else float(guidance)
        try:
            sampling = SamplingConfig(sampler=sampler, steps=int(steps) if steps else None, eta=float(eta),
                                      guidance=w).for_run(self.run, classes_asked=labels is not None)
        except ValueError as e:
            raise _as_error(e) from None
        total, run = sampling.steps, self.run

        def work(on_step):
            return generate(run, n, sampling, seed=seed, batch_size=n, labels=labels, progress=False,
                            on_step=on_step)

        def show(step: Step, done: int) -> Update:
            x0 = step.x0 if step.x0 is not None else None
            return Update(side_by_side([(f"x_t, t = {step.t}", step.x), ("predicted x_0", x0)]),
                          f"step {done} of {total}: t = {step.t}", done, total)

        for item in self._guarded(_stream(work, total, every, show, self.min_interval)):
            if isinstance(item, Update):
                yield item
            else:
                images = item.images
                yield Update(side_by_side([(f"{n} samples, {sampling.sampler}, {total} steps, seed {seed}", images)]),
                             f"done: {n} samples in {total} steps", total, total, self._files(images, "samples"))

    def _labels(self, label, n: int) -> list[int] | None:
        """generate()'s labels: None (every class in turn, or an unconditional run) for "any" or None; otherwise
        the class, by name or index (:func:`~ddpm.sampling.config.parse_class`), for every sample."""
        if not num_classes(self.run) or label is None or label in ("", "any"):
            return None
        names = list(self.run.class_names or map(str, range(num_classes(self.run))))
        try:
            return [parse_class(names, label)] * n
        except ValueError:
            raise PageError(f"class must be one of {', '.join(names)} (or any), got {label}") from None

    def forward(self, picture, t, seed: int = 0) -> tuple[np.ndarray, str]:
        """The notes' stage 1 at one t: (x_0 | x_t picture, a line with abar_t and the SNR)."""
        x0, t = self.picture(picture), self._t(t)
        out = noised(self.run, x0, t, seed=int(seed))
        snr = "infinite (no noise)" if math.isinf(out.snr) else f"{out.snr:.4g} ({10 * math.log10(out.snr):+.1f} dB)"
        text = (f"t = {t}: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with abar_t = {out.abar:.4g}, "
                f"sqrt(abar_t) = {math.sqrt(out.abar):.4f}, sqrt(1 - abar_t) = {math.sqrt(1 - out.abar):.4f}; "
                f"signal-to-noise ratio abar_t / (1 - abar_t) = {snr}")
        return side_by_side([("x_0", x0), (f"x_t, t = {t}", out.x)]), text

    def denoise(self, picture, t, seed: int = 0, sampler: str = "ddpm", steps: int | None = None,
                every: int = 5) -> Iterator[Update]:
        """SDEdit from the x_t of :meth:`forward` (same seed) down to x_0."""
        x0, t = self.picture(picture), self._t(t)
        steps = min(int(steps), t) if steps else None
        try:
            sampling = SamplingConfig(sampler=sampler, steps=steps)
        except ValueError as e:
            raise _as_error(e) from None
        total = steps or t
        seed, run = int(seed), self.run
        x_t = noised(run, x0, t, seed=seed).x

        def work(on_step):
            return edit(run, x0, t, sampling, seed=seed, on_step=on_step)

        def show(step: Step, done: int) -> Update:
            return Update(side_by_side([("x_0", x0), (f"x_t, t = {step.t}", step.x), ("predicted x_0", step.x0)]),
                          f"step {done} of {total}: t = {step.t}", done, total)

        for item in self._guarded(_stream(work, max(total, 1), max(1, int(every)), show, self.min_interval)):
            if isinstance(item, Update):
                yield item
            else:
                yield Update(side_by_side([("x_0", x0), (f"x_t, t = {t}", x_t), ("denoised", item.images)]),
                             f"done: denoised from t = {t} (abar_t = {alpha_bar(run.schedule, t):.4g}) in {total} "
                             f"steps", total, total, self._files(item.images, "denoised"))

    def inpaint(self, picture, mask_choice: str = DRAWN, painted=None, seed: int = 0, n: int = 1,
                steps: int | None = None, jump_length: int | None = None, resample: int | None = None,
                every: int = 10) -> Iterator[Update]:
        """RePaint: fill the masked part of the picture, ``n`` times from seeds seed, seed + 1, ..."""
        x0 = self.picture(picture)
        if mask_choice not in MASK_CHOICES:
            raise PageError(f"mask must be one of {', '.join(MASK_CHOICES)}, got {mask_choice!r}")
        mask = self.mask(mask_choice, painted)
        settings = inpaint_settings(self.T, int(steps) if steps else None, int(jump_length) if jump_length else None,
                                    int(resample) if resample else None)
        if not 1 <= settings["steps"] <= self.T:
            raise PageError(f"steps must lie in 1..{self.T} (this run's T), got {settings['steps']}")
        try:
            total = inpaint_calls(self.T, **settings)  # RePaint's own check: a jump needs room in the steps
        except ValueError as e:
            raise _as_error(e) from None
        n, seed, run = int(n), int(seed), self.run
        images = x0.expand(n, *x0.shape[1:])
        shown = torch.where(mask, torch.full_like(x0, 128), x0)

        def work(on_step):
            return inpaint(run, images, mask, seed=seed, on_step=on_step, batch_size=n, **settings)

        def show(step: Step, done: int) -> Update:
            return Update(side_by_side([("masked", shown), (f"x_t, t = {step.t}", step.x[:1]),
                                        ("predicted x_0", step.x0[:1] if step.x0 is not None else None)]),
                          f"call {done} of {total}: t = {step.t}", done, total)

        for item in self._guarded(_stream(work, total, max(1, int(every)), show, self.min_interval)):
            if isinstance(item, Update):
                yield item
            else:
                yield Update(side_by_side([("masked", shown), (f"{n} inpainted", item.images)], nrow=None),
                             f"done: {total} network calls (steps {settings['steps']}, jump length "
                             f"{settings['jump_length']}, resample {settings['resample']})", total, total,
                             self._files(item.images, "inpainted"))

    def _guarded(self, updates: Iterator) -> Iterator:
        """Library errors of a long action as :class:`PageError` s."""
        try:
            yield from updates
        except PageError:
            raise
        except (ImageError, ValueError) as e:
            raise _as_error(e) from None
