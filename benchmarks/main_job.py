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

from ddpm.cli.main import main as main_cli
from ddpm.runs.config import TrainConfig
from ddpm.runs.rundir import read_metrics

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def demo_flags(makefile: Path = MAKEFILE) -> list[str]:
    """The `ddpm train` flags of `make demo`: the Makefile's ``TRAIN ?= ...`` line, read from it so that the two
    cannot drift apart (the digits-fast preset's recipe, class-conditional on the embedded digits' labels)."""
    for line in makefile.read_text().splitlines():
        name, sep, value = line.partition("?=")
        if sep and name.strip() == "TRAIN":
            return shlex.split(value.split("#", 1)[0])
    raise SystemExit(f"{makefile}: no 'TRAIN ?= ...' line; main_job.py reads make demo's training flags from it")


#: the `ddpm train` flags of `make demo`
DEMO_FLAGS = demo_flags()


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
    train_argv = ["train", "--run-dir", str(run_dir), *shlex.split(args.train_flags)]
    if args.steps:
        train_argv += ["--steps", str(args.steps)]

    t0 = time.perf_counter()
    if main_cli(train_argv) != 0:  # `ddpm train` itself, as make demo runs it
        raise SystemExit(f"ddpm {shlex.join(train_argv)} failed")
    train_s = time.perf_counter() - t0
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = rows[-1]["step"]
    final_loss = sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])

    out = run_dir / "samples" / "ddpm"
    t0 = time.perf_counter()
    sample_argv = ["sample", str(run_dir), "-n", str(args.samples), "--chain", str(min(8, args.samples)), "--out",
                   str(out)]  # as make demo
    if main_cli(sample_argv) != 0:
        raise SystemExit(f"ddpm {shlex.join(sample_argv)} failed")
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
