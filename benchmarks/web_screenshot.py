"""The page of `ddpm serve` in a real browser: start the server, open it in headless Chromium, click Generate, wait
for the grid, save screenshots, and time it.

    python benchmarks/web_screenshot.py runs/digits --out docs/img/web_generate.png --repeats 3

Needs the `web` extra, Selenium (pip install selenium) and Debian's chromium and chromium-driver packages
(apt-get install chromium chromium-driver); nothing is downloaded.  The page's own defaults are used: DDIM, 50
steps, 16 images, the picture every 5 steps.  Times are from the click: to the first live picture and to the
finished grid (status "done"), median over --repeats clicks (seeds 0, 1, ...).  Besides --out it saves
OUT-live.png (mid-run: x_t and the predicted x_0) and, with --inpaint, OUT-inpaint.png (held-out digit 0, bottom
half inpainted with the page's RePaint defaults).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must not look for a browser or driver online

try:  # the command line parses without Selenium (the tests check it against the docs)
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

from _common import headless_chromium  # noqa: E402

from ddpm.web.app import build_app, close, launch  # noqa: E402
from ddpm.web.page import Page  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    """The command line of this script (also parsed by the tests, against the commands in docs/)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--out", default="web_generate.png", help="screenshot of the finished grid (PNG)")
    p.add_argument("--repeats", type=int, default=1, help="Generate clicks to time (default: 1)")
    p.add_argument("--inpaint", action="store_true", help="also inpaint a held-out digit and save OUT-inpaint.png")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    return p


def _src(driver, css: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute("src") if found else None


def _status(driver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, f"{css} textarea")
    return (found[0].get_attribute("value") or "") if found else ""


def _halfway(status: str) -> bool:
    """The status says "step K of N" with K at least N / 2, or "done"."""
    words = status.split()
    if status.startswith("done"):
        return True
    return len(words) >= 4 and words[0] == "step" and int(words[1]) >= int(words[3].rstrip(":")) / 2


def generate_once(driver, wait, out: Path | None, live: Path | None) -> tuple[float, float]:
    """Click Generate; return (seconds to the first live picture, seconds to the finished grid)."""
    before = _src(driver, "#gen-out img")
    driver.find_element(By.CSS_SELECTOR, "#generate-btn").click()
    start = time.perf_counter()
    wait.until(lambda d: _src(d, "#gen-out img") not in (None, before))
    first = time.perf_counter() - start
    if live is not None:
        wait.until(lambda d: _halfway(_status(d, "#gen-status")))
        driver.save_screenshot(str(live))
    wait.until(lambda d: _status(d, "#gen-status").startswith("done"))
    done = time.perf_counter() - start
    if out is not None:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gen-file a"))
        time.sleep(0.5)  # let the last picture paint
        driver.save_screenshot(str(out))
    return first, done


def inpaint_once(driver, wait, out: Path) -> float:
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Inpaint')]").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#inp-load").is_displayed())
    driver.find_element(By.CSS_SELECTOR, "#inp-load").click()
    wait.until(lambda d: "Upload an image" not in d.find_element(By.CSS_SELECTOR, "#inp-in").text)  # the digit is in
    time.sleep(0.5)
    bottom = driver.find_element(By.XPATH, "//input[@type='radio' and @value='bottom']")
    driver.execute_script("arguments[0].click()", bottom)
    driver.find_element(By.CSS_SELECTOR, "#inp-btn").click()
    start = time.perf_counter()
    wait.until(lambda d: _status(d, "#inp-status").startswith("done"))
    seconds = time.perf_counter() - start
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # taller: the result sits below the buttons
                           {"width": 1280, "height": 1240, "deviceScaleFactor": 1, "mobile": False})
    time.sleep(0.5)
    driver.save_screenshot(str(out))
    return seconds


def main(argv=None) -> dict:
    args = make_parser().parse_args(argv)
    if webdriver is None:
        raise SystemExit("this script needs Selenium: pip install selenium")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # Chromium writes no screenshot into a missing folder
    t0 = time.perf_counter()
    app = build_app(Page(args.run))
    _, url, _ = launch(app, block=False)
    driver = None
    try:
        driver = headless_chromium(args)
        driver.get(url)
        wait = WebDriverWait(driver, 600, poll_frequency=0.02)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generate-btn").is_displayed())
        ready = time.perf_counter() - t0
        times = []
        for k in range(args.repeats):
            if k:
                seed = driver.find_element(By.CSS_SELECTOR, "#gen-seed input")
                seed.clear()
                seed.send_keys(str(k))
            last = k == args.repeats - 1
            times.append(generate_once(driver, wait, out if last else None,
                                       out.with_name(out.stem + "-live.png") if k == 0 else None))
            print(f"click {k + 1}: first picture after {times[-1][0]:.2f} s, finished grid after {times[-1][1]:.2f} s",
                  flush=True)
        report = {"page_ready_s": round(ready, 2),
                  "first_update_s": round(statistics.median(t for t, _ in times), 2),
                  "finished_s": round(statistics.median(t for _, t in times), 2), "clicks": times}
        if args.inpaint:
            report["inpaint_s"] = round(inpaint_once(driver, wait, out.with_name(out.stem + "-inpaint.png")), 2)
        print(f"server and page ready after {ready:.1f} s; median over {args.repeats} clicks: first live picture "
              f"{report['first_update_s']:.2f} s, finished 16-image DDIM-50 grid {report['finished_s']:.2f} s"
              + (f"; inpainting {report['inpaint_s']:.1f} s" if args.inpaint else ""))
        print(f"written: {out}")
        return report
    finally:
        if driver is not None:
            driver.quit()
        close(app)


if __name__ == "__main__":
    main()
