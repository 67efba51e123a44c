"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020): train, sample and evaluate.

    ddpm.train(config)            train, or resume with resume=True
    ddpm.sample(run_dir, n, ...)  sample a run and write grid.png, samples.npz, images/
    ddpm.load_run(run_dir)        the EMA network, schedule and config of a run
    ddpm.generate(run, n, ...)    Samples: .images, a uint8 tensor (and .chain); drawn as ddpm sample draws, or as
                                  a SamplingConfig says; labels= for a class-conditional run
    ddpm.SamplingConfig           how to draw: sampler, steps, spacing, variance, eta, guidance
    ddpm.edit(run, images, t)     SDEdit: noise to time t and denoise back (Samples)
    ddpm.inpaint(run, images, m)  RePaint: paint where the mask m is True, keep the rest (Samples)
    ddpm.TrainConfig              the run configuration

Importing ddpm first sets its OpenMP spin default (``ddpm.runtime.threads``), before torch starts its threads.
"""
from .runtime.threads import apply_default as _apply_thread_default

_apply_thread_default()  # before anything imports torch: its OpenMP pool reads the policy once, when it starts

from ._version import __version__  # noqa: E402
from .runs.config import TrainConfig  # noqa: E402
from .sampling.config import SamplingConfig  # noqa: E402
from .sampling.edit import edit, inpaint  # noqa: E402
from .sampling.generate import generate, load_run, sample  # noqa: E402
from .training.trainer import train  # noqa: E402  (binds the function over the submodule of the same name)

__all__ = ["__version__", "TrainConfig", "SamplingConfig", "train", "sample", "generate", "load_run", "edit", "inpaint"]
