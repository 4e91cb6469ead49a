"""Make docs/images/report.png: a small real study, its report, the top of the page in headless Chromium.

    python docs/report_screenshot.py [--out docs/images/report.png] [--keep DIR]

The study is real (the digits trainer, the pretrained backbone, TPE + ASHA on a local Ray) but
short: 12 trials of at most 120 iterations, a few minutes on two cores (the backbone's
pretraining, about 100 s, is cached in $SEMISEG_CACHE after the first run). Needs Debian's
chromium and chromium-driver, as tests/test_browser.py does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to 127.0.0.1 only

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's code, also when the project is installed from another one

# Short enough for a picture, long enough that the curves and the ASHA stops mean something:
# the contrastive loss starts at iteration 20, ASHA's rungs are at 40 and 120.
STUDY = ["--samples", "12", "--max-iters", "120", "--grace", "40", "--reduction", "3", "--seed", "0", "--quiet",
         "--set", "eval_every=20", "ramp_up=20", "bank_lead=10"]
WIDTH, HEIGHT = 1400, 1300  # the page's top: the summary, best so far, score against compute

ALL_DRAWN = """return Array.from(document.querySelectorAll('.js-plotly-plot'))
                   .every(gd => gd.querySelectorAll('.main-svg').length > 0);"""


def screenshot(page: Path, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        raise SystemExit("chromium and chromedriver are missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--enable-unsafe-swiftshader", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)  # no Selenium Manager download
    try:
        browser.set_window_size(WIDTH, HEIGHT)
        browser.get(page.as_uri())
        WebDriverWait(browser, 120).until(lambda d: d.execute_script(ALL_DRAWN))
        out.parent.mkdir(parents=True, exist_ok=True)
        if not browser.save_screenshot(str(out)):
            raise SystemExit(f"chromium could not write {out}")
    finally:
        browser.quit()
    from PIL import Image

    # A palette PNG: a tenth of the size, and the page's flat colours lose nothing visible.
    Image.open(out).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "report.png")
    parser.add_argument("--keep", type=Path, help="a folder to keep the study in (default: a temporary one)")
    args = parser.parse_args()

    from study.cli import main as cli

    out = args.out.resolve()
    root = (args.keep or Path(tempfile.mkdtemp(prefix="semiseg-screenshot-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)  # the page shows the study's folder: `studies/demo`, not this machine's path to it
    try:
        if cli(["run", "--name", "demo", "--replace", *STUDY]) != 0:
            return 1
        if cli(["report", "demo"]) != 0:
            return 1
        screenshot(root / "studies" / "demo" / "report.html", out)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"screenshot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
