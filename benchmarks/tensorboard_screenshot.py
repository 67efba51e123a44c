"""A run's TensorBoard in a real browser: start `tensorboard --logdir RUN/tensorboard` on a local port, open it in
headless Chromium and save a screenshot (the loss curve, the eval/ scalars and the preview grids).

    python benchmarks/tensorboard_screenshot.py runs/watched --out docs/img/tensorboard.png

Needs the `tensorboard` extra and Debian's chromium package (apt-get install chromium); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder trained with --logger tensorboard")
    p.add_argument("--out", default="tensorboard.png", help="the screenshot (PNG)")
    p.add_argument("--filter", default="train/loss|eval/fd|previews",
                   help="TensorBoard's tag filter (a regular expression) of the cards shown")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--wait", type=float, default=20.0, help="seconds the page is given to draw (virtual time)")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(logdir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
                             "--host", "127.0.0.1", "--reload_interval", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"tensorboard did not answer on port {port}")


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    logdir = Path(args.run) / "tensorboard"
    if not logdir.is_dir():
        raise SystemExit(f"{logdir}: no such folder; train with --logger tensorboard")
    port = _free_port()
    proc = _serve(logdir, port)
    try:
        url = f"http://127.0.0.1:{port}/?tagFilter={urllib.request.quote(args.filter)}#timeseries"
        out = Path(args.out).resolve()
        profile = tempfile.mkdtemp(prefix="chromium-")
        subprocess.run([args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
                        f"--window-size={args.width},{args.height}", f"--virtual-time-budget={int(args.wait * 1000)}",
                        f"--screenshot={out}", url], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"written: {out}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
