"""`ddpm import` end to end on a CIFAR-10-shaped network, timed: a UNet2DModel with google/ddpm-cifar10-32's
configuration (full width by default: 35.7M parameters) and random weights, saved as a diffusers DDPMPipeline folder
with that model's scheduler (linear betas 1e-4 to 0.02, T = 1000, fixed_small, clipped x_0); then, each timed,
`ddpm import`, `ddpm sample` of 16 images with a short sampler, and `ddpm eval nll --quick` on a few images.

    python benchmarks/import_cifar10.py                              # full width, 16 DDIM-50 samples, 8 images' bound
    python benchmarks/import_cifar10.py --width 32 --out /tmp/bench_import   # a quick smoke run

The weights are random (the real ones cannot be downloaded here), so this shows the pipeline and its times, not the
paper's numbers: the samples are noise and the bound is far above 3.75 bits/dim.  The images bounded are embedded
MNIST test digits as 32x32 RGB (real images with structure, not CIFAR-10).  diffusers is needed to write the source
folder only; the ddpm commands run in this process, through the same entry point as the `ddpm` command.
Not a test: at full width it takes minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from _common import machine

from ddpm.cli.main import main as ddpm
from ddpm.model.unet import count_parameters
from ddpm.sampling.generate import load_run


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_import_cifar10", help="working folder (replaced)")
    p.add_argument("--width", type=int, default=128, help="block_out_channels[0]: 128 is the paper's network")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--sampler", default="ddim", help="sampler of ddpm sample (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="its steps (default: %(default)s)")
    p.add_argument("--nll-images", type=int, default=8, help="images whose bound is estimated (default: %(default)s)")
    p.add_argument("--nll-data", default="digits",
                   help="the images bounded: 'digits' (the embedded test digits, as RGB) or a folder / .npy / .npz")
    p.add_argument("--quick", type=int, default=10, help="strata of eval nll --quick (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); on a busy shared machine 1 can be several times faster")
    return p


def cifar10_folder(folder: Path, width: int) -> None:
    """google/ddpm-cifar10-32 as a DDPMPipeline folder, at ``width`` channels, with diffusers' random weights."""
    import diffusers  # only this step needs diffusers

    w = [width, 2 * width, 2 * width, 2 * width]
    unet = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=w, layers_per_block=2,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], time_embedding_type="positional",
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, norm_num_groups=min(32, width),
        act_fn="silu", attention_head_dim=None, center_input_sample=False, mid_block_scale_factor=1)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", variance_type="fixed_small", clip_sample=True)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)


def timed(argv: list[str]) -> float:
    print("$ ddpm " + " ".join(argv), flush=True)
    start = time.perf_counter()
    if ddpm(argv) != 0:
        raise SystemExit(f"ddpm {argv[0]} failed")
    return round(time.perf_counter() - start, 1)


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src, run = work / "ddpm-cifar10-32-random", work / "run"
    cifar10_folder(src, args.width)
    result = {"machine": machine(), "width": args.width}
    result["import_s"] = timed(["import", str(src), str(run)])
    result["parameters"] = count_parameters(load_run(run, device="cpu").model)
    result["sample"] = f"{args.samples} images, {args.sampler} {args.steps} steps, one batch"
    result["sample_s"] = timed(["sample", str(run), "-n", str(args.samples), "--batch-size", str(args.samples),
                                "--sampler", args.sampler, "--steps", str(args.steps), "--device", args.device,
                                "--no-progress"])
    what = "embedded test digits as 32x32 RGB" if args.nll_data == "digits" else f"images of {args.nll_data}"
    result["nll"] = f"{args.nll_images} {what}, {args.quick} strata + L_0"
    out = work / "nll"
    result["nll_s"] = timed(["eval", "nll", str(run), "--data", args.nll_data, "-n", str(args.nll_images), "--quick",
                             str(args.quick), "--device", args.device, "--out", str(out), "--no-progress"])
    result["bpd"] = round(json.loads((out / "nll.json").read_text())["bpd"], 3)
    result["network_s_per_image"] = round(network_seconds(run, args.device), 3)
    print(json.dumps(result, indent=2))
    return result


def network_seconds(run: Path, device: str) -> float:
    """Seconds per image of one forward pass of the imported network at batch 16 (the unit the other times are
    made of: sampling is samples x steps of them, the quick bound images x (strata + 1))."""
    loaded = load_run(run, device=device)
    x = torch.randn(16, 3, 32, 32, device=loaded.device).contiguous(memory_format=torch.channels_last)
    t = torch.full((16,), 500, device=loaded.device)
    with torch.inference_mode():
        loaded.model(x, t)
        start = time.perf_counter()
        loaded.model(x, t)
    return (time.perf_counter() - start) / 16


if __name__ == "__main__":
    main()
