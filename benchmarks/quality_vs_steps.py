"""Sample quality against sampler steps on the digits: classifier FD (and KID, classes present) of DDPM-1000
and of DDIM and DPM-Solver++ (and respaced ancestral DDPM) at 10, 20, 50 and 100 steps, all from the same
trained run, the same seeds and the same number of samples, against the real-vs-real floor measured the same way.

    python benchmarks/quality_vs_steps.py runs/digits-10k -n 1000
    python benchmarks/quality_vs_steps.py runs/digits -n 200 --steps 10 20 --no-ddpm   # quicker look
    python benchmarks/quality_vs_steps.py runs/gpu/digits -n 1000 --batch-size 1000 --device cuda

Samplers (``--samplers``): ``ddim`` (eta = 0, the ODE), ``ddim-eta1`` (eta = 1), ``dpm++2m`` (DPM-Solver++(2M),
log-SNR spacing), ``ddpm`` (ancestral sampling on the respaced schedule, sigma_t^2 = respaced beta_t), and
``ddim-quadratic`` / ``dpm++2m-quadratic`` (the same two ODE solvers on the DDIM code's quadratic spacing).
Targets of the project's speed issue: DDIM-50 within 15% of DDPM-1000, DPM-Solver++-20 within 25%.
Not a test: DDPM-1000 costs n x 1000 network calls.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddpm.evaluation.quality import load_classifier, quality_report
from ddpm.sampling.generate import generate, load_run

#: name -> (sampler, eta, spacing); spacing None is the sampler's default (uniform; log-SNR for dpm++2m)
SETTINGS = {"ddim": ("ddim", 0.0, None), "ddim-eta1": ("ddim", 1.0, None), "dpm++2m": ("dpm++2m", 0.0, None),
            "ddpm": ("ddpm", 0.0, None), "ddim-quadratic": ("ddim", 0.0, "quadratic"),
            "dpm++2m-quadratic": ("dpm++2m", 0.0, "quadratic")}


def _verdict(rows, name: str, steps: int, ref: float, within: float) -> str | None:
    row = next((r for r in rows if r["sampler"] == name and r["steps"] == steps), None)
    if row is None:
        return None
    rel = row["fd"] / ref - 1
    return (f"{name}-{steps}: FD {row['fd']:.2f} is {100 * rel:+.0f}% from DDPM-1000's {ref:.2f}, target within "
            f"{100 * within:.0f}%: {'met' if rel <= within else 'NOT met'}")


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("-n", type=int, default=500, help="samples per sampler setting")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpm++2m", "ddpm"], choices=list(SETTINGS),
                   help="few-step samplers to compare (default: ddim dpm++2m ddpm)")
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step ancestral reference")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                   help="sampling precision (default: fp32, so that every device measures the same network)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed: sample k of every row gets seed sample_seed(seed, k)")
    p.add_argument("--out", default=None, help="JSON file for the table (default: RUN/eval/quality_vs_steps.json)")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)

    run = load_run(args.run, device=args.device)
    if args.precision == "fp32" and run.device.type == "cuda":  # fp32 means fp32: no TF32 convolutions either
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    classifier = load_classifier()
    settings = [] if args.no_ddpm else [("ddpm", None)]
    settings += [(name, k) for name in args.samplers for k in args.steps]
    rows = []
    for name, steps in settings:
        sampler, eta, spacing = SETTINGS[name]
        t0 = time.perf_counter()
        images = generate(run, args.n, seed=args.seed, batch_size=args.batch_size, sampler=sampler, steps=steps,
                          eta=eta, spacing=spacing, precision=args.precision, progress=False).images
        secs = time.perf_counter() - t0
        rep = quality_report(images, classifier=classifier, floor=not rows)
        row = {"sampler": name, "steps": steps or run.schedule.num_timesteps, "fd": rep["fd"],
               "kid": rep["kid_mean"], "classes_present": rep["classes"]["classes_present"],
               "entropy_bits": rep["classes"]["entropy_bits"], "seconds": round(secs, 1)}
        if "floor" in rep:
            floor = rep["floor"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    T = run.schedule.num_timesteps
    ref = next((r["fd"] for r in rows if r["sampler"] == "ddpm" and r["steps"] == T), None)
    print(f"\nfloor (real test vs real train, n={args.n}): FD {floor['fd']:.2f}, KID {floor['kid_mean']:.4f}")
    print(f"{'sampler':<18}{'steps':>6}{'FD':>9}{'vs DDPM-1000':>14}{'KID':>9}{'classes':>9}{'seconds':>9}")
    for r in rows:
        rel = f"{100 * (r['fd'] / ref - 1):+.0f}%" if ref else "-"
        print(f"{r['sampler']:<18}{r['steps']:>6}{r['fd']:>9.2f}{rel:>14}{r['kid']:>9.4f}"
              f"{r['classes_present']:>9}{r['seconds']:>9.1f}")
    if ref:
        for line in (_verdict(rows, "ddim", 50, ref, 0.15), _verdict(rows, "dpm++2m", 20, ref, 0.25)):
            if line:
                print(line)
    out = Path(args.out) if args.out else Path(args.run) / "eval" / "quality_vs_steps.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "floor": floor, "rows": rows, "torch_threads": torch.get_num_threads(),
                               "checkpoint": str(run.checkpoint), "device": str(run.device)}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
