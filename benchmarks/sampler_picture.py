"""One picture of the same sample seeds drawn by several samplers of one run, a labelled row each.

    python benchmarks/sampler_picture.py runs/digits-10k --out docs/img/samplers_10k.png

Rows: DDPM-1000 (Algorithm 2), DDIM-50 (eta = 0), DPM-Solver++(2M) with 20 steps and DDIM-50 with eta = 1,
each drawing sample seeds 0..n-1 (base seed 0).  DDPM-1000 dominates the time (n x 1000 network calls).
"""
from __future__ import annotations

import argparse

from PIL import Image, ImageDraw, ImageFont

from ddpm.runs.images import make_grid
from ddpm.sampling.generate import generate, load_run

ROWS = [("DDPM-1000", dict(sampler="ddpm")), ("DDIM-50, eta=0", dict(sampler="ddim", steps=50)),
        ("DPM-Solver++ 20", dict(sampler="dpm++2m", steps=20)),
        ("DDIM-50, eta=1", dict(sampler="ddim", steps=50, eta=1.0))]


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--out", default="samplers.png")
    p.add_argument("-n", type=int, default=16, help="samples per row (default: 16, in rows of 8)")
    p.add_argument("--scale", type=int, default=2, help="pixel magnification (default: 2)")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)

    run = load_run(args.run)
    panels = []
    for label, kw in ROWS:
        grid = make_grid(generate(run, args.n, seed=0, batch_size=args.n, progress=False, **kw).images, nrow=8)
        panels.append((label, grid.resize((grid.width * args.scale, grid.height * args.scale), Image.NEAREST)))
    label_w, gap = 150, 6
    out = Image.new("L", (label_w + panels[0][1].width, sum(g.height for _, g in panels) + gap * (len(panels) - 1)),
                    255)
    draw, font, y = ImageDraw.Draw(out), ImageFont.load_default(), 0
    for label, grid in panels:
        out.paste(grid.convert("L"), (label_w, y))
        draw.text((6, y + grid.height // 2 - 6), label, fill=0, font=font)
        y += grid.height + gap
    out.save(args.out, optimize=True)
    print(f"written: {args.out} {out.size}")


if __name__ == "__main__":
    main()
