"""A run's TensorBoard in a real browser: start `tensorboard --logdir RUN/tensorboard` on a local port, open it in
headless Chromium and save a screenshot (the loss curve, the eval/ scalars and the preview grids).

    python benchmarks/tensorboard_screenshot.py runs/watched --out docs/img/tensorboard.png

Needs the `tensorboard` extra, Selenium (pip install selenium) and Debian's chromium and chromium-driver packages
(apt-get install chromium chromium-driver); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must not look for a browser or driver online

try:  # the command line parses without Selenium (the tests check it against the docs)
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

from _common import headless_chromium  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder trained with --logger tensorboard")
    p.add_argument("--out", default="tensorboard.png", help="the screenshot (PNG)")
    p.add_argument("--filter", default="train/loss|eval/fd|previews",
                   help="TensorBoard's tag filter (a regular expression) of the cards shown")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--width", type=int, default=1500)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--wait", type=float, default=60.0, help="seconds the page is given to draw its cards")
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
    if webdriver is None:
        raise SystemExit("needs Selenium: pip install selenium")
    logdir = Path(args.run) / "tensorboard"
    if not logdir.is_dir():
        raise SystemExit(f"{logdir}: no such folder; train with --logger tensorboard")
    port = _free_port()
    proc = _serve(logdir, port)
    driver = None
    try:
        driver = headless_chromium(args)
        driver.get(f"http://127.0.0.1:{port}/?tagFilter={urllib.request.quote(args.filter)}#timeseries")
        # drawn: a line chart's canvas/svg path and a preview <img> inside the cards
        WebDriverWait(driver, args.wait).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "card-view img") and
            d.find_elements(By.CSS_SELECTOR, "card-view line-chart"))
        for button in driver.find_elements(By.XPATH, "//button[contains(., 'Settings')]"):  # the side panel off
            with contextlib.suppress(Exception):
                button.click()
                break
        time.sleep(3)  # the charts' last frame
        out = Path(args.out).resolve()
        driver.save_screenshot(str(out))
        print(f"written: {out}")
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
