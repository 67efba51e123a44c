"""Preview grids a training run leaves behind: EMA samples every ``sample_every`` steps, with fixed seeds."""
from __future__ import annotations

from pathlib import Path

from ..runs.images import save_grid
from ..sampling.config import SamplingConfig
from ..sampling.generate import LoadedRun, generate

__all__ = ["write_preview"]


def write_preview(trainer) -> Path:
    """Sample ``preview_samples`` images from the trainer's EMA weights (fixed seeds, so grids of successive steps
    are comparable) and save them as ``RUN/previews/step_XXXXXXX.png``.  A class-conditional run draws the classes
    in turn (sample k of class k mod K), purely conditionally (guidance w = 0), as ``ddpm sample`` does; the
    preview's sampler and its fewer steps are a :class:`~ddpm.sampling.config.SamplingConfig` like any other."""
    cfg = trainer.config
    run = LoadedRun(trainer.ema, trainer.schedule, cfg, trainer.run_dir, trainer.device)
    steps = None if cfg.preview_sampler == "ddpm" else min(cfg.preview_steps, trainer.schedule.num_timesteps)
    sampling = SamplingConfig(sampler=cfg.preview_sampler, steps=steps,
                              variance=cfg.variance if cfg.preview_sampler == "ddpm" else None)
    images = generate(run, cfg.preview_samples, sampling, seed=0, batch_size=cfg.preview_samples,
                      progress=False).images
    path = trainer.run_dir / "previews" / f"step_{trainer.step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(path, images)
    return path
