"""The README's main job, timed: `make demo`'s training (DEMO_FLAGS, the Makefile's TRAIN) on the embedded digits,
then 64 samples and a chain of 8 with `ddpm sample`'s defaults, as `make demo` draws them.  Prints steps, img/s,
final loss and wall times.

    python benchmarks/main_job.py                       # exactly what make demo trains and draws
    python benchmarks/main_job.py --train-flags ""      # `ddpm train`'s own defaults (the digits recipe) instead
    python benchmarks/main_job.py --steps 200 --run-dir /tmp/quick   # a shorter smoke run

Not a test: it takes about as long as the main job itself.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import torch

from ddpm.cli.main import build_parser
from ddpm.cli.main import main as main_cli
from ddpm.cli.train import (
    config_from_args,  # the same flag -> config mapping as `ddpm train`
)
from ddpm.runs.rundir import read_metrics
from ddpm.training.trainer import train

#: the `ddpm train` flags of `make demo` (the Makefile's TRAIN; tests/test_docs.py keeps the two the same): the
#: digits-fast preset's recipe, class-conditional on the embedded digits' labels
DEMO_FLAGS = ["--preset", "digits-fast", "--class-cond"]


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench_main_job")
    p.add_argument("--train-flags", default=shlex.join(DEMO_FLAGS),
                   help="the `ddpm train` flags (default: make demo's, %(default)r)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="keep an existing run folder instead of starting afresh")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)

    run_dir = Path(args.run_dir)
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    train_argv = ["train", "--run-dir", str(run_dir), "--no-progress", *shlex.split(args.train_flags)]
    if args.steps:
        train_argv += ["--steps", str(args.steps)]
    config = config_from_args(build_parser().parse_args(train_argv))
    config.progress = True

    t0 = time.perf_counter()
    train(config)
    train_s = time.perf_counter() - t0
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = rows[-1]["step"]
    final_loss = sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])

    out = run_dir / "samples" / "ddpm"
    t0 = time.perf_counter()
    main_cli(["sample", str(run_dir), "-n", str(args.samples), "--chain", "8", "--out", str(out)])  # as make demo
    sample_s = time.perf_counter() - t0
    drawn = json.loads((out / "samples.json").read_text())  # what was drawn, defaults resolved

    result = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_flags": args.train_flags, "steps": steps, "batch_size": config.batch_size,
        "train_wall_s": round(train_s, 1),
        "train_img_per_s": round(steps * config.batch_size * config.grad_accum / train_s, 1),
        "final_loss_last5_logs": round(final_loss, 4),
        "sample_images": args.samples, "sampler": drawn.get("sampler"), "sample_steps": drawn.get("steps"),
        "sample_variance": drawn.get("variance"),
        "sample_wall_s": round(sample_s, 1), "samples_dir": str(out),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
