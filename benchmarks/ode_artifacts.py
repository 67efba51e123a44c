"""What the deterministic samplers get wrong on the digits: a grey haze and speckle in the black background,
and how both follow the norm of the starting noise x_T.

    python benchmarks/ode_artifacts.py runs/digits -n 256
    python benchmarks/ode_artifacts.py runs/digits/checkpoints/step_0001000 runs/digits -n 256 --samplers ddim-50
    python benchmarks/ode_artifacts.py runs/digits -n 256 --with-ddpm --fd --picture docs/img/ode_artifacts.png

Every real digit has a black frame: the MNIST digit sits inside its own 4-pixel margin of the 28x28 image (padded by
2 more pixels at 32x32), so the outer ``--frame`` pixels (default 4) of a real image are 0 in all but a few of the
embedded images; the real digits are read at the runs' own size (``ddpm.data.datasets.load_images``).  For each
sampler the script draws sample seeds 0..n-1 and reports, over that frame:

- haze: the mean grey level (0..255) of the frame;
- speckle: the mean absolute difference between horizontally adjacent frame pixels, in grey levels;
- speckled: the share of samples whose speckle exceeds ``--speckle-threshold`` (default 6 grey levels);
- r(|x_T|, speckle) and r(|x_T|, haze): Pearson correlations across samples with |x_T| / sqrt(d), the norm of
  the sample's own starting noise (the same x_T for every sampler, since x_T is the first draw of its seed).

With ``--fd`` it also gives each row's classifier FD against the 500 real test digits (the yardstick of
``benchmarks/quality_vs_steps.py``, floor measured at the same n), the FD after every pixel darker than
``--dark`` grey levels (default 32) is set to black, and the FD on the "clean" seeds only: those whose sample
from the first sampler listed is not speckled (the same seeds for every row).

The real training digits give the reference row.  ``--picture`` saves the first 16 samples of each sampler
with the grey levels multiplied by ``--boost`` (default 6), which makes a haze of a few levels visible.
"""
from __future__ import annotations

import argparse
import functools
import math
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from ddpm.core.samplers import PerSampleNoise
from ddpm.data.datasets import DataConfig, load_images
from ddpm.runs.images import make_grid
from ddpm.sampling.generate import generate, load_run, sample_seed

#: name -> generate() keywords
SAMPLERS = {"ddim-50": dict(sampler="ddim", steps=50), "ddim-100": dict(sampler="ddim", steps=100),
            "dpm++2m-20": dict(sampler="dpm++2m", steps=20), "ddim-50-eta1": dict(sampler="ddim", steps=50, eta=1.0),
            "ddpm-1000": dict(sampler="ddpm"), "ddpm-1000-small": dict(sampler="ddpm", variance="fixed-small")}


def frame_pixels(images: torch.Tensor, frame: int) -> torch.Tensor:
    """(N, P) float grey levels of the outer ``frame`` rows and columns of uint8 (N, C, H, W) images."""
    x = images.float().mean(dim=1)
    mask = torch.zeros(x.shape[-2:], dtype=torch.bool)
    mask[:frame], mask[-frame:], mask[:, :frame], mask[:, -frame:] = True, True, True, True
    return x[:, mask]


def frame_stats(images: torch.Tensor, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (haze, speckle) in grey levels: the frame's mean, and the mean |difference| of horizontal
    neighbours within the top and bottom bands of the frame."""
    x = images.float().mean(dim=1)
    bands = torch.cat([x[:, :frame], x[:, -frame:]], dim=1)
    speckle = (bands[..., 1:] - bands[..., :-1]).abs().flatten(1).mean(1)
    return frame_pixels(images, frame).mean(1), speckle


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = a.norm() * b.norm()
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def noise_norms(n: int, seed: int, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """|x_T| / sqrt(d) of sample seeds 0..n-1: x_T is the first draw of each sample's generator on ``device``
    (where the samplers draw it: a GPU's generators give other numbers than the CPU's)."""
    x_T = PerSampleNoise([sample_seed(seed, k) for k in range(n)], device).randn(shape).cpu()
    return x_T.flatten(1).norm(dim=1) / math.sqrt(x_T[0].numel())


def _row(name: str, images: torch.Tensor, norms: torch.Tensor | None, args) -> dict:
    haze, speckle = frame_stats(images, args.frame)
    row = {"samples": name, "haze": haze.mean().item(), "speckle": speckle.mean().item(),
           "speckled": (speckle > args.speckle_threshold).double().mean().item()}
    if norms is not None:
        row["r_norm_speckle"], row["r_norm_haze"] = pearson(norms, speckle), pearson(norms, haze)
    return row


@functools.lru_cache(maxsize=1)
def _classifier():
    from ddpm.evaluation.quality import load_classifier
    return load_classifier()


def _fd_row(name: str, images: torch.Tensor, args, previous: list[dict]) -> dict:
    """Classifier FD as drawn, with the dark pixels blacked out, and on the clean seeds (fixed by the first row)."""
    from ddpm.evaluation.quality import quality_report

    def fd(x: torch.Tensor, floor: bool = False) -> dict:
        return quality_report(x, classifier=_classifier(), floor=floor, kid_subset_size=min(1000, len(x)))
    first = fd(images, floor=not previous)
    keep = previous[0]["clean"] if previous else frame_stats(images, args.frame)[1] <= args.speckle_threshold
    dark = torch.where(images < args.dark, torch.zeros_like(images), images)
    n_clean = int(keep.sum())  # FD needs 2 images: with fewer clean seeds the column is left empty (nan)
    fd_clean = fd(images[keep])["fd"] if n_clean >= 2 else float("nan")
    return {"samples": name, "fd": first["fd"], "fd_dark": fd(dark)["fd"], "fd_clean": fd_clean,
            "clean": keep, "clean_n": n_clean,
            "floor": first["floor"]["fd"] if "floor" in first else previous[0]["floor"]}


def _picture(path: str, panels: list[tuple[str, torch.Tensor]], boost: float) -> None:
    grids = []
    for label, images in panels:
        boosted = (images[:16].float() * boost).clamp(0, 255).to(torch.uint8)
        grid = make_grid(boosted, nrow=16)
        grids.append((label, grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)))
    label_w, gap = 190, 6
    out = Image.new("L", (label_w + grids[0][1].width, sum(g.height for _, g in grids) + gap * (len(grids) - 1)), 255)
    draw, font, y = ImageDraw.Draw(out), ImageFont.load_default(), 0
    for label, grid in grids:
        out.paste(grid.convert("L"), (label_w, y))
        draw.text((6, y + grid.height // 2 - 6), label, fill=0, font=font)
        y += grid.height + gap
    out.save(path)
    print(f"wrote {path}")


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or checkpoint folders (one block of rows each)")
    p.add_argument("-n", type=int, default=256, help="samples per sampler (default: 256)")
    p.add_argument("--samplers", nargs="+", default=["ddim-50", "dpm++2m-20", "ddim-50-eta1"],
                   choices=list(SAMPLERS), help="default: ddim-50 dpm++2m-20 ddim-50-eta1")
    p.add_argument("--with-ddpm", action="store_true", help="add ddpm-1000 (n x 1000 network calls)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame", type=int, default=4, help="width of the background frame in pixels (default: 4)")
    p.add_argument("--speckle-threshold", type=float, default=6.0, help="grey levels (default: 6)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x_0 to [-1, 1] while sampling")
    p.add_argument("--fd", action="store_true", help="also classifier FD: as drawn, background cleaned, clean seeds")
    p.add_argument("--dark", type=int, default=32, help="--fd: grey level below which a pixel is set to black")
    p.add_argument("--picture", default=None, help="save a contrast-boosted picture of the last run's samples")
    p.add_argument("--boost", type=float, default=6.0, help="grey-level multiplier of the picture (default: 6)")
    return p


def main(argv=None) -> None:
    args = make_parser().parse_args(argv)

    names = args.samplers + (["ddpm-1000"] if args.with_ddpm and "ddpm-1000" not in args.samplers else [])
    rows, panels, fd_rows, real = [], [], [], None
    for path in args.runs:
        run = load_run(path, device=args.device)
        size = run.config.model.image_size
        if real is None:  # the embedded train digits as the runs see them, at their size
            real = load_images(DataConfig(image_size=size, channels=1, split="train"))
            real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[: args.n]]  # all classes
            rows.append(_row("real train digits", real, None, args))
        if real.shape[-1] != size:
            raise SystemExit(f"{path}: draws {size}x{size}, the runs before it {real.shape[-1]}x{real.shape[-1]}; "
                             "compare runs of one size")
        norms = noise_norms(args.n, args.seed, (run.config.model.in_channels, size, size), run.device)
        panels = [("real", real)]
        for name in names:
            t0 = time.perf_counter()
            images = generate(run, args.n, seed=args.seed, batch_size=args.batch_size, progress=False,
                              precision="fp32", clip_denoised=not args.no_clip, **SAMPLERS[name]).images
            row = _row(f"{path}: {name}", images, norms, args)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            panels.append((name, images))
            if args.fd:
                fd_rows.append(_fd_row(row["samples"], images, args, fd_rows))
            print(f"  {row['samples']}: {row['seconds']} s", flush=True)
        print(f"  {path}: |x_T|/sqrt(d) quantiles 10/50/90%: "
              + " / ".join(f"{q:.3f}" for q in norms.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist()))
    print()
    print("| samples | haze (grey levels) | speckle (grey levels) | speckled | r(abs x_T, speckle) "
          "| r(abs x_T, haze) | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        corr = (f"{r['r_norm_speckle']:.2f} | {r['r_norm_haze']:.2f}" if "r_norm_speckle" in r else "- | -")
        print(f"| {r['samples']} | {r['haze']:.2f} | {r['speckle']:.2f} | {100 * r['speckled']:.0f}% | {corr} "
              f"| {r.get('seconds', '')} |")
    if fd_rows:
        clean = fd_rows[0]["clean_n"]
        print(f"\nclassifier FD, {args.n} samples (real-vs-real floor at that n: {fd_rows[0]['floor']:.2f}); "
              f"clean seeds: the {clean} whose {fd_rows[0]['samples']} sample is not speckled")
        print(f"| samples | FD | FD, pixels < {args.dark} set to black | FD on the {clean} clean seeds |")
        print("| --- | ---: | ---: | ---: |")
        for r in fd_rows:
            print(f"| {r['samples']} | {r['fd']:.2f} | {r['fd_dark']:.2f} | {r['fd_clean']:.2f} |")
    if args.picture:
        _picture(args.picture, panels, args.boost)


if __name__ == "__main__":
    main()
