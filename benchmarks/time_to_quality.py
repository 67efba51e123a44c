"""Time to quality: the digits recipe of `ddpm train` against `make demo`'s, trained and scored in one run.

Each recipe is trained from scratch on this machine at the library's default threads (checkpoints along the way),
then scored with the classifier yardstick of `ddpm eval quality` at n samples over several sets of sample seeds (the
same seeds for every recipe).  It prints, per recipe: training minutes, steps, img/s, the time to draw the demo's
64 samples, classifier FD (mean and spread over the seed sets), KID and the classes drawn; and it plots FD against
training minutes for every checkpoint (one seed set), so time-to-quality can be read at a glance.

    python benchmarks/time_to_quality.py                                  # default and demo, 3 x 1,000 samples each
    python benchmarks/time_to_quality.py --recipes default,demo,fast      # + digits-fast without the labels
    python benchmarks/time_to_quality.py --out runs/ttq --plot docs/img/time_to_quality.png
    python benchmarks/time_to_quality.py --reference ddpm:1000:fixed-large   # + the paper's sampler, final models
    python benchmarks/time_to_quality.py --busy 15                        # + the busy-machine slowdown, 15 s each way
    python benchmarks/time_to_quality.py --extra "--steps 40" -n 100 --seeds 1,2 --points 2 --out /tmp/ttq   # smoke

Everything measured is kept in OUT/results.json as it comes; a rerun skips finished training runs and scores
already in it, so an interrupted benchmark goes on where it stopped (delete OUT to start afresh).
A class-conditional recipe is scored as `ddpm eval quality` scores it: every digit in turn, unguided, and the share
of samples the classifier reads as the digit asked for is reported beside the FD.
Not a test: the two recipes take about 20 minutes of training on 2 cores, and the scoring as long again.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import time
from pathlib import Path

from main_job import DEMO_FLAGS

from ddpm.cli.main import main as main_cli
from ddpm.evaluation.classifier import load_classifier
from ddpm.evaluation.quality import quality_report
from ddpm.runs.checkpoint import complete_checkpoints
from ddpm.runs.config import TrainConfig
from ddpm.runs.rundir import read_metrics
from ddpm.runtime.atomic import write_json_atomic
from ddpm.sampling.defaults import resolve_classes, resolve_sampling
from ddpm.sampling.generate import generate, load_run

#: name -> the `ddpm train` flags of the recipe: "default" is what `ddpm train` does with no flag (the digits recipe,
#: what `make demo` trained before), "demo" what `make demo` trains now (main_job.DEMO_FLAGS: digits-fast with the
#: digits' labels), "fast" the digits-fast preset without the labels (28x28, batch 32, Min-SNR-5: runs/config.py)
RECIPES = {
    "default": [],
    "demo": DEMO_FLAGS,
    "fast": ["--preset", "digits-fast"],
}
#: the recipes run unless --recipes says otherwise
DEFAULT_RECIPES = ("default", "demo")


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/time_to_quality", help="runs and results.json go here")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                   help=f"comma-separated, of {', '.join(RECIPES)} (default: %(default)s)")
    p.add_argument("--extra", default="", help="`ddpm train` flags added to every recipe, e.g. \"--steps 40\" for a "
                                                "smoke run")
    p.add_argument("-n", type=int, default=1000, help="samples per seed set (default: 1000)")
    p.add_argument("--seeds", default="1,1001,2001", help="base sample seeds, one scored set each")
    p.add_argument("--sampler", default=None,
                   help="SAMPLER[:STEPS[:VARIANCE]] for every score (default: `ddpm sample`'s default)")
    p.add_argument("--reference", default=None,
                   help="SAMPLER[:STEPS[:VARIANCE]] scored on each final model with the same seeds, e.g. "
                        "ddpm:1000:fixed-large (the paper's Algorithm 2)")
    p.add_argument("--points", type=int, default=6, help="checkpoints per run on the FD-against-minutes curve")
    p.add_argument("--busy", type=float, default=0.0, metavar="SECONDS",
                   help="also time training and sampling steps idle and beside a busy loop this script starts")
    p.add_argument("--plot", default=None, help="PNG of FD against minutes (default: OUT/time_to_quality.png)")
    return p


def parse_sampler(text: str | None) -> tuple[str | None, int | None, str | None]:
    """SAMPLER[:STEPS[:VARIANCE]] -> (sampler, steps, variance); None (and any part left out) is the default of
    `ddpm sample` (:func:`ddpm.sampling.defaults.resolve_sampling`)."""
    if text is None:
        return None, None, None
    name, steps, variance = (text.split(":") + ["", ""])[:3]
    return name, int(steps) if steps else None, variance or None


def sampler_label(run, spec) -> str:
    sampler, steps, variance, spacing = resolve_sampling(run, *spec)
    return f"{sampler}-{steps or run.schedule.num_timesteps}" + "".join(f" {v}" for v in (variance, spacing) if v)


class Results:
    """results.json, rewritten atomically after every measurement."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get(self, *keys):
        d = self.data
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    def put(self, value, *keys):
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        write_json_atomic(self.path, self.data)


def train_recipe(name: str, flags: list[str], run_dir: Path, points: int, results: Results) -> dict:
    """Train one recipe from scratch (or finish an interrupted run), checkpointing ``points`` times; returns the
    training record: steps, minutes, img/s and the minutes at which each checkpoint was written."""
    done = results.get(name, "training")
    if done is not None:
        return done
    fresh = not run_dir.exists()
    steps, log_every = recipe_steps(flags)
    every = max(1, steps // points)
    argv = ["train", "--resume", str(run_dir)]
    if fresh:  # a metrics row, with its clock time, at every checkpoint; one preview grid, at the end
        argv = ["train", "--run-dir", str(run_dir), *flags, "--checkpoint-every", str(every), "--keep-checkpoints",
                str(points + 1), "--log-every", str(math.gcd(log_every, every)), "--sample-every", str(steps)]
    print(f"[{name}] ddpm {shlex.join(argv)}  ({steps} steps)", flush=True)
    start = time.time()
    if main_cli(argv) != 0:  # `ddpm train` itself
        raise SystemExit(f"[{name}] ddpm {shlex.join(argv)} failed")
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    rows = read_metrics(run_dir / "metrics.jsonl")
    # the trainer logs a wall-clock time with every row; minutes count from the start of `ddpm train` (an
    # interrupted run's from its first row, less the time its first steps took)
    first = rows[0]
    t0 = start if fresh else first["time"] - first["step"] * config.batch_size / first["img_per_s"]
    minutes = {r["step"]: (r["time"] - t0) / 60 for r in rows}
    record = {"flags": flags, "steps": config.steps, "batch_size": config.batch_size,
              "minutes": round(minutes[max(minutes)], 2),
              "img_per_s": round(config.steps * config.batch_size / (60 * minutes[max(minutes)]), 1),
              "checkpoints": {str(s): round(minutes[s], 2) for s in sorted(minutes) if s % every == 0}}
    results.put(record, name, "training")
    return record


def recipe_steps(flags: list[str]) -> tuple[int, int]:
    """(steps, log_every) of the `ddpm train` flags ``flags``: --steps and --log-every where they are given, else
    the preset's recipe (``TrainConfig.for_preset``, what `ddpm train --preset` starts from)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--preset", default="digits")
    p.add_argument("--steps", type=int)
    p.add_argument("--log-every", type=int)
    given, _ = p.parse_known_args(flags)
    recipe = TrainConfig.for_preset(given.preset)
    return given.steps or recipe.steps, given.log_every or recipe.log_every


def score(run, n: int, seed: int, spec, classifier) -> dict:
    sampler, steps, variance, spacing = resolve_sampling(run, *spec)
    labels, w = resolve_classes(run, n, None, None)  # as `ddpm eval quality`: a conditional run, every class in turn
    drawn = generate(run, n, seed=seed, sampler=sampler, steps=steps, variance=variance, spacing=spacing,
                     batch_size=250, progress=n > 250, labels=labels, guidance=w)
    rep = quality_report(drawn.images, classifier=classifier, floor=False, labels=drawn.labels)
    got = {"fd": round(rep["fd"], 4), "kid": round(rep["kid_mean"], 5), "classes": rep["classes"]["classes_present"]}
    if labels is not None:
        got["accuracy"] = round(rep["conditional"]["accuracy"], 4)  # the share drawn as the digit asked for
    return got


def score_sets(name: str, key: str, run, args, sampler, classifier, results: Results) -> dict:
    out = {}
    for seed in args.seed_list:
        got = results.get(name, key, str(seed))
        if got is None:
            print(f"[{name}] {key}: {sampler_label(run, sampler)}, {args.n} samples, seed {seed}", flush=True)
            got = score(run, args.n, seed, sampler, classifier)
            results.put(got, name, key, str(seed))
        out[str(seed)] = got
    return out


def demo_sampling_seconds(run_dir: Path, name: str, results: Results) -> float:
    """Seconds for what `make demo` draws after training: `ddpm sample RUN -n 64 --chain 8`."""
    got = results.get(name, "demo_sample_s")
    if got is None:
        t = time.perf_counter()
        main_cli(["sample", str(run_dir), "-n", "64", "--chain", "8", "--out", str(run_dir / "samples" / "demo"),
                  "--no-progress"])
        got = round(time.perf_counter() - t, 1)
        results.put(got, name, "demo_sample_s")
    return got


def summary(scores: dict) -> dict:
    fds = [s["fd"] for s in scores.values()]
    out = {"fd_mean": statistics.mean(fds), "fd_min": min(fds), "fd_max": max(fds),
           "kid_mean": statistics.mean(s["kid"] for s in scores.values()),
           "classes": min(s["classes"] for s in scores.values())}
    if all("accuracy" in s for s in scores.values()):
        out["accuracy"] = statistics.mean(s["accuracy"] for s in scores.values())
    return out


def plot(results: Results, names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name in names:
        curve = results.get(name, "curve") or {}
        pts = sorted((results.get(name, "training", "checkpoints")[s], c["fd"]) for s, c in curve.items())
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{name}: ddpm train {' '.join(RECIPES[name]) or '(defaults)'}")
    floor = results.get("floor")
    if floor is not None:
        ax.axhline(floor, color="grey", ls=":", label="real train digits (floor)")
    ax.set_xlabel("training minutes (this machine, default threads)")
    ax.set_ylabel("classifier FD (lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def busy_slowdown(seconds: float, results: Results) -> dict:
    got = results.get("busy")
    if got is None:
        from busy_machine import measure
        idle, busy = measure("ddpm", "digits", seconds, busy=False), measure("ddpm", "digits", seconds, busy=True)
        got = {k: {"idle": idle[k], "busy": busy[k], "slowdown": idle[k] / busy[k]}
               for k in ("train_steps_per_s", "sample_steps_per_s")}
        results.put(got, "busy")
    return got


def main(argv=None) -> None:
    from _common import machine

    args = make_parser().parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    names = [r for r in args.recipes.split(",") if r]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}: choose from {sorted(RECIPES)}")
    sampler = parse_sampler(args.sampler)
    reference = parse_sampler(args.reference) if args.reference else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json")
    results.put(machine(), "machine")
    classifier = load_classifier()
    if results.get("floor") is None:
        from ddpm.evaluation.quality import real_floor
        results.put(round(real_floor(args.n, classifier=classifier)["fd"], 4), "floor")

    for name in names:  # training first, all of it, so the minutes are not disturbed by scoring
        train_recipe(name, RECIPES[name] + shlex.split(args.extra), out / name, args.points, results)
    for name in names:
        run_dir = out / name
        demo_sampling_seconds(run_dir, name, results)
        for ck in sorted(complete_checkpoints(run_dir)):
            step = str(int(ck.name.split("_")[-1]))
            if results.get(name, "curve", step) is None:
                print(f"[{name}] curve: step {step}", flush=True)
                results.put(score(load_run(ck), args.n, args.seed_list[0], sampler, classifier), name, "curve", step)
        final = load_run(run_dir)
        last = str(results.get(name, "training", "steps"))
        if results.get(name, "curve", last) is not None and results.get(name, "scores", str(args.seed_list[0])) is None:
            results.put(results.get(name, "curve", last), name, "scores", str(args.seed_list[0]))  # the same samples
        scores = score_sets(name, "scores", final, args, sampler, classifier, results)
        results.put({"sampler": sampler_label(final, sampler), **summary(scores)}, name, "summary")
        if reference is not None:
            ref = score_sets(name, "reference", final, args, reference, classifier, results)
            results.put({"sampler": sampler_label(final, reference), **summary(ref)}, name, "reference summary")
    if args.busy:
        busy_slowdown(args.busy, results)
    plot(results, names, Path(args.plot) if args.plot else out / "time_to_quality.png")
    print(report(results, names, args, reference))


def report(results: Results, names: list[str], args, reference) -> str:
    lines = [results.get("machine"), "",
             f"classifier FD and KID at n = {args.n}, sample seed sets {args.seeds}; floor (real train digits) "
             f"FD {results.get('floor'):.2f}", "",
             "| recipe | train minutes | steps | img/s | 64 demo samples, s | train + demo, min | sampler | FD mean | "
             "FD range | KID | classes | class asked for |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
    for name in names:
        tr = results.get(name, "training")
        rows = [results.get(name, "summary")]
        if reference is not None:
            rows.append(results.get(name, "reference summary"))
        for s in rows:
            demo_s = results.get(name, "demo_sample_s")
            accuracy = f"{100 * s['accuracy']:.1f}%" if "accuracy" in s else "-"
            lines.append(f"| {name} | {tr['minutes']:.1f} | {tr['steps']} | {tr['img_per_s']:.0f} | {demo_s:.1f} | "
                         f"{tr['minutes'] + demo_s / 60:.1f} | {s['sampler']} | {s['fd_mean']:.2f} | "
                         f"{s['fd_min']:.2f}-{s['fd_max']:.2f} | {s['kid_mean']:.4f} | {s['classes']}/10 | "
                         f"{accuracy} |")
    lines.append("")
    for name in names:
        curve = results.get(name, "curve") or {}
        mins = results.get(name, "training", "checkpoints")
        pts = ", ".join(f"{mins[s]:.1f} min {curve[s]['fd']:.2f}" for s in sorted(curve, key=int))
        lines.append(f"{name} FD against minutes (seed {args.seed_list[0]}): {pts}")
    busy = results.get("busy")
    if busy:
        for k, v in busy.items():
            lines.append(f"busy machine, {k}: idle {v['idle']:.2f}, beside a busy loop {v['busy']:.2f}, "
                         f"{v['slowdown']:.2f}x slower")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
