"""Post-hoc EMA, scored: the sample quality of EMA lengths reconstructed after training (:mod:`ddpm.training.ema`),
beside the run's fixed EMA(s), with the run's quality metric (classifier FD and KID, :mod:`ddpm.evaluation.quality`).
``ddpm ema RUN --sweep`` writes ``sweep.json`` and ``sweep.png`` (FD against sigma_rel); docs/ema.md."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..runs.checkpoint import ema_decays, ema_weights_name, latest_checkpoint, load_weights
from ..runtime.atomic import atomic_write_path, write_json_atomic
from ..training.ema import reconstruct
from .quality import load_classifier, quality_report

__all__ = ["DEFAULT_SWEEP", "ema_sweep", "plot_sweep"]

#: the EMA lengths ``ddpm ema --sweep`` scores by default: EDM2's Fig. 5 spans about 0.02 to 0.25
DEFAULT_SWEEP = (0.02, 0.03, 0.05, 0.07, 0.10, 0.13, 0.17, 0.22)


def _score(run, weights: dict, label: str | None, draw, classifier, reference) -> dict:
    """Draw and score ``run`` with ``weights`` in place of its own.  ``label``: the checkpoint's name of these
    weights ("ema", "ema:D"), under which Analytic-DPM's estimate is stored and read; None for weights the
    checkpoint does not hold (a reconstruction), estimated afresh and stored nowhere."""
    run.model.load_state_dict(weights)
    run.cache.clear()  # what was computed from the previous weights (Analytic-DPM's variances) no longer holds
    run.weights = label or run.weights
    images, labels = draw(run if label is not None else replace(run, checkpoint=None, cache={}))
    r = quality_report(images, reference, classifier=classifier, floor=False, labels=labels)
    row = {"n": r["n"], "fd": r["fd"], "kid_mean": r["kid_mean"], "kid_std": r["kid_std"]}
    if "conditional" in r:
        row["conditional_accuracy"] = r["conditional"]["accuracy"]
    return row


def ema_sweep(run, run_dir, sigma_rels, draw, out_dir, *, classifier=None, reference="test", say=print,
              sampling: dict | None = None) -> dict:
    """Score every length of ``sigma_rels`` (reconstructed from the run's snapshots) and every fixed EMA decay of
    the run's latest checkpoint: ``run`` is a :class:`~ddpm.sampling.generate.LoadedRun` whose weights are
    replaced in turn, ``draw(run)`` draws its samples ``(uint8 images, labels or None)`` with the same seeds each
    time.  ``classifier`` and ``reference`` as :func:`~ddpm.evaluation.quality.quality_report` takes them.  Writes
    ``sweep.json`` and ``sweep.png`` into ``out_dir`` and returns the record."""
    classifier = classifier if classifier is not None else load_classifier()
    ckpt = latest_checkpoint(run_dir)
    cfg = run.config.to_dict()
    fixed = []
    for i, decay in enumerate(ema_decays(cfg)):
        weights = load_weights(ckpt, "ema" if i == 0 else ema_weights_name(decay))
        label = "ema" if i == 0 else f"ema:{decay!r}"
        fixed.append({"decay": decay, "weights": label, **_score(run, weights, label, draw, classifier, reference)})
        say(f"fixed EMA {decay:g}: FD {fixed[-1]['fd']:.3f}")
    rows = []
    for sigma_rel in sigma_rels:
        weights, rec = reconstruct(run_dir, sigma_rel)
        rows.append({"sigma_rel": sigma_rel, "gamma": rec["gamma"], "step": rec["step"],
                     **_score(run, weights, None, draw, classifier, reference)})
        say(f"sigma_rel {sigma_rel:g}: FD {rows[-1]['fd']:.3f}")
    best = min(rows, key=lambda r: r["fd"])
    record = {"checkpoint": ckpt.name, "classifier": classifier[1]["key"], "sampling": sampling or {},
              "posthoc": rows, "fixed": fixed, "best_sigma_rel": best["sigma_rel"]}
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "sweep.json", record)
    plot_sweep(record, out_dir / "sweep.png")
    return record


def plot_sweep(record: dict, path) -> None:
    """FD against the post-hoc EMA length (log axis), with each fixed EMA as a dashed line, written atomically."""
    import matplotlib  # heavy: only when a figure is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["posthoc"]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    ax.plot([r["sigma_rel"] for r in rows], [r["fd"] for r in rows], "o-", label="post-hoc EMA (reconstructed)")
    for f, style in zip(record["fixed"], ("--", ":", "-.", (0, (5, 1)))):
        ax.axhline(f["fd"], ls=style, color="grey", label=f"fixed EMA, decay {f['decay']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("EMA length sigma_rel")
    ax.set_ylabel(f"classifier FD (n = {rows[0]['n']})")
    ax.set_title(f"{record['checkpoint']}: FD against EMA length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
