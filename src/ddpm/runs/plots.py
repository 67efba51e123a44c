"""The loss curve of a run folder, ``loss.png``."""
from __future__ import annotations

from pathlib import Path

from ..runtime.atomic import atomic_write_path

__all__ = ["plot_loss_curve"]


def plot_loss_curve(rows: list[dict], path: Path) -> None:
    """Training loss against step (log scale), written atomically as a PNG."""
    import matplotlib  # heavy (about 0.5 s to import): only when a curve is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
