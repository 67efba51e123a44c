"""How much a second CPU-bound program costs ddpm's training and sampling, for several OpenMP thread policies.

For each policy a fresh child process (the policy is read when torch's OpenMP runtime starts, so it cannot change
inside one process) times a preset's training step (digits by default: batch 64, the Trainer itself) and
Algorithm 2's steps (``ddpm.core.samplers.ancestral_sample`` through the network wrapper ``ddpm sample`` uses, batch
64, over a 10-step plan, per step), first on the idle machine, then with a neighbour: a one-thread busy loop this script
starts beside it (a second program on a 2-core laptop).  The spin and two-thread policies run with the thread count
fixed at 2 (DDPM_THREADS=2), so that only their OpenMP setting differs.  It prints steps/s idle and busy, the
slowdown busy/idle, and each policy's idle speed relative to torch's own default.

    python benchmarks/busy_machine.py                       # every policy, 20 s per measurement
    python benchmarks/busy_machine.py --policies ddpm,torch --seconds 30

Policies: ``ddpm`` is what the library does when the user sets nothing: the spin count of runtime/threads.py
and the thread governor of runtime/governor.py (the thread count follows the cores the neighbour leaves free);
``fixed-2`` is the same spin count with two threads throughout (DDPM_THREADS=2);
``torch`` is libgomp's own default (GOMP_SPINCOUNT 300000, active spinning); ``passive`` is
OMP_WAIT_POLICY=PASSIVE; ``one-thread`` is OMP_NUM_THREADS=1; ``spinN`` is GOMP_SPINCOUNT=N.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from ddpm.model.unet import PRESETS

POLICIES = {
    "ddpm": {},
    "fixed-2": {"DDPM_THREADS": "2"},
    "torch": {"GOMP_SPINCOUNT": "300000", "DDPM_THREADS": "2"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "DDPM_THREADS": "2"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
    "spin1000": {"GOMP_SPINCOUNT": "1000", "DDPM_THREADS": "2"},
    "spin10000": {"GOMP_SPINCOUNT": "10000", "DDPM_THREADS": "2"},
    "spin30000": {"GOMP_SPINCOUNT": "30000", "DDPM_THREADS": "2"},
    "spin100000": {"GOMP_SPINCOUNT": "100000", "DDPM_THREADS": "2"},
}
#: variables a policy may set; every child starts with none of them, then gets its policy's
POLICY_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "DDPM_THREADS")


#: reverse steps per timed sampling call
PLAN_STEPS = 10


def child(preset: str, seconds: float) -> None:
    """Run in the measured process: time training steps, then sampling steps, for ``seconds`` each."""
    import tempfile

    import torch

    from ddpm.core.samplers import PerSampleNoise, ancestral_sample, ancestral_timesteps
    from ddpm.runs.config import TrainConfig
    from ddpm.sampling.generate import model_fn
    from ddpm.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig.for_preset(preset, run_dir=f"{tmp}/run", batch_size=64, device="cpu",
                                                 progress=False))
        out = {"threads_at_start": torch.get_num_threads(), "spincount": os.environ.get("GOMP_SPINCOUNT"),
               "wait_policy": os.environ.get("OMP_WAIT_POLICY")}
        out["train_steps_per_s"] = _rate(trainer.train_step, seconds)
        cfg = trainer.config.model
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        f = model_fn(trainer.ema, trainer.device)  # channels_last, and the thread governor before every call
        plan = ancestral_timesteps(trainer.schedule, PLAN_STEPS)

        def sampling_call():
            ancestral_sample(f, trainer.schedule, PerSampleNoise(range(64)), shape, timesteps=plan)
        out["sample_steps_per_s"] = _rate(sampling_call, seconds) * len(plan)
        out["threads_at_end"] = torch.get_num_threads()
        trainer.close()
    print(json.dumps(out), flush=True)


def _rate(step, seconds: float) -> float:
    for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - start)


def _busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(policy: str, preset: str, seconds: float, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env.update(POLICIES[policy])
    neighbour = _busy_loop() if busy else None
    try:
        res = subprocess.run([sys.executable, __file__, "--child", "--preset", preset, "--seconds", str(seconds)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: all)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per measurement (default: 20)")
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                   help="the U-Net preset, with its own image size and recipe (default: digits)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = make_parser().parse_args()
    if args.child:
        child(args.preset, args.seconds)
        return
    from _common import format_table, machine
    print(machine())
    runs: dict[str, list] = {}  # a policy named more than once is measured each time (interleaved) and averaged
    for policy in args.policies.split(","):
        idle = measure(policy, args.preset, args.seconds, busy=False)
        busy = measure(policy, args.preset, args.seconds, busy=True)
        runs.setdefault(policy, []).append((idle, busy))
        print(f"{policy}: idle {idle}, busy {busy}", file=sys.stderr, flush=True)

    def mean(policy, which, key):
        return statistics.mean(run[which][key] for run in runs[policy])

    base = "torch" if "torch" in runs else next(iter(runs))
    rows = []
    for policy, measured in runs.items():
        idle, busy = measured[-1]
        row = [policy, f"{idle['threads_at_end']} / {busy['threads_at_end']}", str(len(measured))]
        for key in ("train_steps_per_s", "sample_steps_per_s"):
            i, b = mean(policy, 0, key), mean(policy, 1, key)
            row += [f"{i:.2f}", f"{b:.2f}", f"{i / b:.2f}x", f"{i / mean(base, 0, key):.2f}"]
        rows.append(row)
    print(format_table(["policy", "threads idle / busy", "runs", "train idle", "train busy", "slowdown",
                        "idle vs " + base,
                        "sample idle", "sample busy", "slowdown", "idle vs " + base], rows))


if __name__ == "__main__":
    main()
