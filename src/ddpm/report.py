"""Pictures a training run leaves behind: preview grids of EMA samples and the loss curve."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_preview", "plot_loss_curve"]


def write_preview(trainer) -> Path:
    """Sample ``preview_samples`` images from the trainer's EMA weights (fixed seeds, so grids of successive steps
    are comparable) and save them as ``RUN/previews/step_XXXXXXX.png``."""
    from .generate import LoadedRun, generate
    from .images import save_grid

    cfg = trainer.config
    run = LoadedRun(trainer.ema, trainer.schedule, cfg, trainer.run_dir, trainer.device)
    steps = None if cfg.preview_sampler == "ddpm" else min(cfg.preview_steps, trainer.schedule.num_timesteps)
    images = generate(run, cfg.preview_samples, seed=0, batch_size=cfg.preview_samples, sampler=cfg.preview_sampler,
                      steps=steps, progress=False)
    path = trainer.run_dir / "previews" / f"step_{trainer.step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(path, images)
    return path


def plot_loss_curve(rows: list[dict], path: Path) -> None:
    """Training loss against step (log scale), written atomically as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .images import atomic_write_path

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
