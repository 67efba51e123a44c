"""Sample quality against sampler steps on the digits: classifier FD (and KID, classes present) of DDPM-1000
and of DDIM and DPM-Solver++ at 10, 20, 50 and 100 steps, all from the same trained run, the same seeds and the
same number of samples, against the real-vs-real floor measured the same way.

    python benchmarks/quality_vs_steps.py runs/digits -n 500
    python benchmarks/quality_vs_steps.py runs/digits -n 200 --steps 10 20 --no-ddpm   # quicker look

Targets of the project's speed issue: DDIM-50 within 15% of DDPM-1000, DPM-Solver++-20 within 25%.
Not a test: DDPM-1000 costs n x 1000 network calls.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddpm.generate import generate, load_run
from ddpm.quality import load_classifier, quality_report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("-n", type=int, default=500, help="samples per sampler setting")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step ancestral reference")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the table (default: RUN/eval/quality_vs_steps.json)")
    args = p.parse_args()

    run = load_run(args.run)
    classifier = load_classifier()
    settings = [] if args.no_ddpm else [("ddpm", None)]
    settings += [(s, k) for s in ("ddim", "dpm++2m") for k in args.steps]
    rows = []
    for sampler, steps in settings:
        t0 = time.perf_counter()
        images = generate(run, args.n, seed=args.seed, batch_size=args.batch_size, sampler=sampler, steps=steps,
                          progress=False)
        secs = time.perf_counter() - t0
        rep = quality_report(images, classifier=classifier, floor=not rows)
        row = {"sampler": sampler, "steps": steps or run.schedule.num_timesteps, "fd": rep["fd"],
               "kid": rep["kid_mean"], "classes_present": rep["classes"]["classes_present"],
               "entropy_bits": rep["classes"]["entropy_bits"], "seconds": round(secs, 1)}
        if "floor" in rep:
            floor = rep["floor"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    ref = next((r["fd"] for r in rows if r["sampler"] == "ddpm"), None)
    print(f"\nfloor (real test vs real train, n={args.n}): FD {floor['fd']:.2f}, KID {floor['kid_mean']:.4f}")
    print(f"{'sampler':<10}{'steps':>6}{'FD':>9}{'vs DDPM-1000':>14}{'KID':>9}{'classes':>9}{'seconds':>9}")
    for r in rows:
        rel = f"{100 * (r['fd'] / ref - 1):+.0f}%" if ref else "-"
        print(f"{r['sampler']:<10}{r['steps']:>6}{r['fd']:>9.2f}{rel:>14}{r['kid']:>9.4f}"
              f"{r['classes_present']:>9}{r['seconds']:>9.1f}")
    out = Path(args.out) if args.out else Path(args.run) / "eval" / "quality_vs_steps.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "floor": floor, "rows": rows, "torch_threads": torch.get_num_threads()},
                              indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
