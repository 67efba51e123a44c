"""Inpainting the held-out digits: keep the top half of each test digit, let the model paint the bottom half, and
count how often the digit classifier (the one behind `ddpm eval quality`) still names the true digit.

    python benchmarks/inpaint_digits.py runs/digits --out-json inpaint_digits.json --picture inpaint_digits.png

Four rows, on the same digits and seeds: the real digits; the half-masked input alone (bottom half black); plain
replacement (RePaint with --resample 1: the known pixels pasted in at every step, no jumps); RePaint with jumps
(--jump-length, --resample).  Both painters run on the same respaced schedule of --steps levels (ancestral steps,
as Algorithm 2 on the respaced betas).  The picture shows 16 of the digits, spread over them, in those four rows.
The test split lists the digits class by class, so ``-n`` below 500 takes digits spread evenly over it (every
class about equally often), not the first n.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from ddpm.data.embedded import digits_split
from ddpm.evaluation.classifier import load_classifier
from ddpm.evaluation.quality import classifier_outputs
from ddpm.runs.images import make_grid
from ddpm.sampling.edit import half_mask, held_out, inpaint, inpaint_calls
from ddpm.sampling.generate import load_run


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run trained on the embedded digits (at its own size)")
    p.add_argument("-n", type=int, default=500, help="test digits, spread evenly over the 500 (default: all)")
    p.add_argument("--steps", type=int, default=100, help="levels of the respaced schedule (default: 100)")
    p.add_argument("--jump-length", type=int, default=5, help="RePaint's j (default: 5)")
    p.add_argument("--resample", type=int, default=5, help="RePaint's r (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="base seed of both painters (default: 0)")
    p.add_argument("--batch-size", type=int, default=100, help="digits per batch (default: 100)")
    p.add_argument("--out-json", default=None, help="also write the numbers here")
    p.add_argument("--picture", default=None, help="write the picture of 16 digits here (PNG)")
    return p


def accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the images the classifier names as their label."""
    _, logits = classifier_outputs(model, images)
    return (logits.argmax(1) == labels).double().mean().item()


def picture(rows: list[tuple[str, torch.Tensor]], path: str, scale: int = 2) -> None:
    """The rows of 16 digits under each other, each with its label on the left."""
    grids = [(label, make_grid(x, nrow=len(x))) for label, x in rows]
    grids = [(label, g.resize((g.width * scale, g.height * scale), Image.NEAREST)) for label, g in grids]
    label_w, gap = 190, 4
    out = Image.new("L", (label_w + grids[0][1].width, sum(g.height + gap for _, g in grids) - gap), 255)
    draw, font, y = ImageDraw.Draw(out), ImageFont.load_default(), 0
    for label, g in grids:
        out.paste(g.convert("L"), (label_w, y))
        draw.text((6, y + g.height // 2 - 6), label, fill=0, font=font)
        y += g.height + gap
    out.save(path, optimize=True)


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    run = load_run(args.run)
    chosen = torch.linspace(0, 499, args.n).round().long()  # the split is ordered by class: spread the choice
    images = held_out(run, 0, 499)[chosen]
    labels = digits_split("test")[1][chosen]
    mask = half_mask("bottom", run.config.model.image_size)
    classifier, info = load_classifier()
    masked = torch.where(mask, torch.zeros_like(images), images)
    painters = {"plain replacement": dict(resample=1),
                f"RePaint (j = {args.jump_length}, r = {args.resample})": dict(jump_length=args.jump_length,
                                                                                 resample=args.resample)}
    results = {"real digits": (accuracy(classifier, images, labels), images, None),
               "half-masked input alone": (accuracy(classifier, masked, labels), masked, None)}
    for name, kw in painters.items():
        start = time.perf_counter()
        done = inpaint(run, images, mask, seed=args.seed, steps=args.steps, batch_size=args.batch_size, **kw).images
        seconds = time.perf_counter() - start
        calls = inpaint_calls(run.schedule.num_timesteps, args.steps, kw.get("jump_length"), kw["resample"])
        results[name] = (accuracy(classifier, done, labels), done, (calls, seconds))
        print(f"{name}: {calls} network calls per batch, {seconds:.0f} s", flush=True)
    report = {"run": str(run.checkpoint), "n": args.n, "steps": args.steps, "seed": args.seed,
              "classifier": {"key": info["key"], "test_accuracy": info["test_accuracy"]},
              "accuracy": {name: acc for name, (acc, _, _) in results.items()},
              "network_calls": {name: c[0] for name, (_, _, c) in results.items() if c},
              "seconds": {name: round(c[1], 1) for name, (_, _, c) in results.items() if c}}
    print(f"{'':<34}{'classifier names the true digit':>32}")
    for name, (acc, _, _) in results.items():
        print(f"{name:<34}{100 * acc:>31.1f}%")
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(report, f, indent=2)
    if args.picture:
        shown = torch.linspace(0, args.n - 1, min(16, args.n)).round().long()
        picture([(name, x[shown]) for name, (_, x, _) in results.items()], args.picture)
        print(f"written: {args.picture}")
    return report


if __name__ == "__main__":
    main()
