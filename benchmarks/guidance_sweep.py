"""The trade-off classifier-free guidance makes: sample quality (classifier FD, KID) against conditional accuracy
(the share of samples the digit classifier assigns to the digit asked for) as the guidance weight w grows,
on a class-conditional digits run (``ddpm train --class-cond``).

    python benchmarks/guidance_sweep.py runs/digits-cond --uncond runs/digits -n 1000
    python benchmarks/guidance_sweep.py runs/digits-cond -n 200 --guidance 0 2 --no-timing   # quicker look

Every w draws the same n samples: sample k has seed sample_seed(seed, k) and class k mod 10 (so n = 1000 is 100
of each digit), with the same sampler (default DDIM-50, eta = 0: the default of ``ddpm eval quality``).  w follows
Ho & Salimans 2022, eq. 6: eps~ = (1 + w) eps(x, t, y) - w eps(x, t); w = 0 is the purely conditional model
(the "guidance scale" of other libraries is 1 + w).  Rows:

* one per w: FD, KID, conditional accuracy overall and of the worst class;
* ``no class``: the conditional run's own unconditional model (label "no class", same seeds, no labels);
* ``--uncond RUN``: an unconditional run (the same recipe and budget) on the same seeds and sampler, for the
  target "FD at w = 0 no worse than the unconditional model's".

Timing (``--no-timing`` skips it): the seconds per sampler step at batch ``--time-batch`` (64) of the guided
sampler (one forward pass of the doubled batch), of the purely conditional one (w = 0, one pass of the batch), of
the unconditional run, and of guidance done as two separate forward passes, measured in this one process,
round-robin (``--time-repeats`` rounds, each a ``--time-steps``-step call of the same sampler), the median of the
rounds in wall time and in CPU time.  The target asks guided sampling to cost at most 1.2x the unconditional per
step.  Writes RUN/eval/guidance_sweep.json and the FD-against-accuracy picture (``--plot``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ddpm.core.guidance import guidance_combine
from ddpm.core.samplers import PerSampleNoise, run_sampler
from ddpm.evaluation.quality import load_classifier, quality_report
from ddpm.runtime.atomic import atomic_write_path
from ddpm.sampling.generate import class_labels, generate, load_run, model_fn

DEFAULT_WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0]


def t_range(value: str) -> tuple[int, int]:
    """An argparse type: LO-HI (or LO,HI), two whole numbers, a range of the paper's t (as ``ddpm sample
    --guidance-interval`` reads it)."""
    try:
        lo, hi = (int(v) for v in value.replace(",", "-").split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI, two whole numbers, e.g. 100-700; got {value!r}") from None
    return lo, hi


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a class-conditional run folder (ddpm train --class-cond)")
    p.add_argument("--uncond", default=None, help="an unconditional run to compare with, same seeds and sampler")
    p.add_argument("-n", type=int, default=1000, help="samples per row, classes in turn (default: %(default)s)")
    p.add_argument("--guidance", type=float, nargs="+", default=DEFAULT_WEIGHTS,
                   help="the weights w to sweep (default: 0 0.5 1 2 4)")
    p.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpm++2m"], help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default: %(default)s)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ... (default: auto)")
    p.add_argument("--intervals", nargs="*", type=t_range, default=[], metavar="LO-HI",
                   help="also guide only in these ranges of the paper's t (Kynkaanniemi et al. 2024), one row each")
    p.add_argument("--interval-guidance", type=float, nargs="+", default=[2.0], metavar="W",
                   help="the weights w of the interval rows (default: 2)")
    p.add_argument("--no-timing", action="store_true", help="skip the time-per-step measurement")
    p.add_argument("--time-batch", type=int, default=64, help="batch of the timing (default: %(default)s)")
    p.add_argument("--time-steps", type=int, default=10, help="sampler steps per timed call (default: %(default)s)")
    p.add_argument("--time-repeats", type=int, default=7, help="timed rounds (default: %(default)s)")
    p.add_argument("--plot", default=None, help="PNG of FD against accuracy (default: RUN/eval/guidance_tradeoff.png)")
    p.add_argument("--out", default=None, help="JSON of the table (default: RUN/eval/guidance_sweep.json)")
    return p


def _row(name, images, labels, classifier, seconds, floor: bool) -> dict:
    rep = quality_report(images, classifier=classifier, labels=labels, floor=floor)
    row = {"row": name, "fd": rep["fd"], "kid": rep["kid_mean"], "kid_std": rep["kid_std"],
           "classes_present": rep["classes"]["classes_present"], "seconds": round(seconds, 1)}
    if "conditional" in rep:
        c = rep["conditional"]
        row.update(accuracy=c["accuracy"], min_class_accuracy=c["min_class_accuracy"], min_class=c["min_class"],
                   per_class=c["per_class"])
    if floor:
        row["floor"] = {"fd": rep["floor"]["fd"], "kid": rep["floor"]["kid_mean"]}
    return row


def _two_pass_guided(f, labels: torch.Tensor, w: float, null: int):
    """Guidance done the slow way, for the timing only: the conditional and the unconditional pass as two calls."""
    def model(x, t):
        return guidance_combine(f(x, t, labels), f(x, t, torch.full_like(labels, null)), w)
    return model


def time_per_step(run, uncond, args) -> dict:
    """Seconds per sampler step at batch ``time_batch``: guided (one doubled pass), conditional (w = 0), the
    unconditional run, and guided as two passes; round-robin, median of ``time_repeats`` rounds."""
    b, steps = args.time_batch, args.time_steps
    cfg = run.config.model
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    labels = torch.tensor(class_labels(cfg.num_classes, b), device=run.device)
    f = model_fn(run.model, run.device, "fp32")
    null = cfg.num_classes

    from ddpm.core.guidance import guided_model
    cases = {
        "guided w=1 (one pass, batch 2x)": guided_model(f, labels, 1.0, null, cfg.in_channels),
        "conditional w=0 (one pass)": guided_model(f, labels, 0.0, null, cfg.in_channels),
        "guided w=1 (two passes)": _two_pass_guided(f, labels, 1.0, null),
    }
    for lo, hi in args.intervals:  # the share of the timed sampler's steps inside sets the cost
        cases[f"guided w=1 in t {lo}-{hi}"] = guided_model(f, labels, 1.0, null, cfg.in_channels,
                                                           interval=(lo - 1, hi - 1))
    if uncond is not None:
        cases["unconditional run"] = model_fn(uncond.model, uncond.device, "fp32")

    def call(model):
        noise = PerSampleNoise(range(b), run.device)
        with torch.inference_mode():
            run_sampler(model, run.schedule, noise, shape, sampler=args.sampler, steps=steps, eta=args.eta)

    wall = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    for model in cases.values():  # warm-up
        call(model)
    names = list(cases)
    for r in range(args.time_repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            w0, c0 = time.perf_counter(), time.process_time()
            call(cases[name])
            wall[name].append((time.perf_counter() - w0) / steps)
            cpu[name].append((time.process_time() - c0) / steps)
    out = {name: {"wall_s_per_step": statistics.median(wall[name]), "cpu_s_per_step": statistics.median(cpu[name]),
                  "wall_all": wall[name]} for name in names}
    base = "unconditional run" if uncond is not None else "conditional w=0 (one pass)"
    for name in names:
        out[name]["ratio_wall"] = out[name]["wall_s_per_step"] / out[base]["wall_s_per_step"]
        out[name]["ratio_cpu"] = out[name]["cpu_s_per_step"] / out[base]["cpu_s_per_step"]
    out["baseline"] = base
    return out


def plot(rows, uncond_fd, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guided = [r for r in rows if "w" in r]
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    ax.plot([r["fd"] for r in guided], [100 * r["accuracy"] for r in guided], "o-", color="C0",
            label="conditional accuracy (all samples)")
    ax.plot([r["fd"] for r in guided], [100 * r["min_class_accuracy"] for r in guided], "s--", color="C1",
            label="worst class's accuracy")
    for r in guided:
        ax.annotate(f"w={r['w']:g}", (r["fd"], 100 * r["accuracy"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    for r in (r for r in rows if "w_interval" in r):
        ax.plot(r["fd"], 100 * r["accuracy"], "*", color="C2", ms=10)
        ax.annotate(f"w={r['w_interval']:g}, t {r['interval'][0]}-{r['interval'][1]}", (r["fd"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(5, -10), fontsize=8, color="C2")
    if uncond_fd is not None:
        ax.axvline(uncond_fd, color="grey", ls=":", label=f"unconditional run's FD ({uncond_fd:.2f})")
    ax.set_xlabel("classifier FD (lower is better)")
    ax.set_ylabel("samples of the digit asked for (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)
    run = load_run(args.run, device=args.device)
    if run.config.class_names is None:
        raise SystemExit(f"error: {args.run} is not a class-conditional run (ddpm train --class-cond)")
    uncond = load_run(args.uncond, device=args.device) if args.uncond else None
    classifier = load_classifier()
    labels = class_labels(len(run.config.class_names), args.n)
    kw = dict(seed=args.seed, batch_size=args.batch_size, sampler=args.sampler, steps=args.steps, eta=args.eta,
              precision="fp32", progress=False)
    how = f"{args.sampler}-{args.steps}" + (f" eta {args.eta:g}" if args.sampler == "ddim" else "")
    print(f"{args.run}: {args.n} samples per row, {how}, classes in turn, seed {args.seed}; "
          f"torch {torch.get_num_threads()} threads", flush=True)
    rows = []
    for w in args.guidance:
        t0 = time.perf_counter()
        drawn = generate(run, args.n, labels=labels, guidance=w, **kw)
        row = {"w": w, **_row(f"w={w:g}", drawn.images, drawn.labels, classifier, time.perf_counter() - t0,
                              floor=not rows)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_class"}), flush=True)
    for lo, hi in args.intervals:
        for w in args.interval_guidance:
            t0 = time.perf_counter()
            drawn = generate(run, args.n, labels=labels, guidance=w, guidance_interval=(lo, hi), **kw)
            rows.append({"w_interval": w, "interval": [lo, hi],
                         **_row(f"w={w:g}, t in {lo}-{hi}", drawn.images, drawn.labels, classifier,
                                time.perf_counter() - t0, floor=False)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_class"}), flush=True)
    t0 = time.perf_counter()
    rows.append(_row("no class", generate(run, args.n, labels="none", **kw).images, None, classifier,
                     time.perf_counter() - t0, floor=False))
    print(json.dumps(rows[-1]), flush=True)
    uncond_fd = None
    if uncond is not None:
        t0 = time.perf_counter()
        rows.append(_row(f"unconditional run {args.uncond}", generate(uncond, args.n, **kw).images, None, classifier,
                         time.perf_counter() - t0, floor=False))
        uncond_fd = rows[-1]["fd"]
        print(json.dumps(rows[-1]), flush=True)

    floor = rows[0]["floor"]
    print(f"\nfloor (real test vs real train, n={args.n}): FD {floor['fd']:.2f}")
    print(f"| {'row':<34} | {'FD':>6} | {'KID':>8} | {'accuracy':>8} | {'worst class':>14} |")
    print(f"|{'-' * 36}|{'-' * 7}:|{'-' * 9}:|{'-' * 9}:|{'-' * 15}:|")
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}%" if "accuracy" in r else "-"
        worst = f"{100 * r['min_class_accuracy']:.0f}% ({r['min_class']})" if "accuracy" in r else "-"
        print(f"| {r['row']:<34} | {r['fd']:>6.2f} | {r['kid']:>8.4f} | {acc:>8} | {worst:>14} |")

    timing = None
    if not args.no_timing:
        timing = time_per_step(run, uncond, args)
        print(f"\nseconds per {args.sampler} step at batch {args.time_batch} ({args.time_repeats} interleaved rounds "
              f"of {args.time_steps} steps, median; ratios against the {timing['baseline']}):")
        for name, t in timing.items():
            if isinstance(t, dict):
                print(f"  {name:<34} wall {t['wall_s_per_step'] * 1e3:7.1f} ms ({t['ratio_wall']:.2f}x)   "
                      f"CPU {t['cpu_s_per_step'] * 1e3:7.1f} ms ({t['ratio_cpu']:.2f}x)")

    eval_dir = Path(args.run) / "eval"
    picture = Path(args.plot) if args.plot else eval_dir / "guidance_tradeoff.png"
    plot(rows, uncond_fd, picture, f"classifier-free guidance on {Path(args.run).name}: {args.n} samples, {how}")
    out = Path(args.out) if args.out else eval_dir / "guidance_sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "sampler": args.sampler, "steps": args.steps, "eta": args.eta,
                               "seed": args.seed, "checkpoint": str(run.checkpoint),
                               "uncond_checkpoint": str(uncond.checkpoint) if uncond else None, "rows": rows,
                               "timing": timing, "torch_threads": torch.get_num_threads()}, indent=2) + "\n")
    print(f"written: {out}, {picture}")


if __name__ == "__main__":
    main()
