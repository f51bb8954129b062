"""A real browser for the page of GET /ui: Debian's chromium and chromium-driver, headless, through Selenium.

Used by tests/test_ui_browser.py, and to take the README's screenshot of a running service:

    python -m tests.browser http://localhost:3000/ui data/demo/test/*/circle.0000.jpg ... --out docs/ui.png

The flags keep Chromium from reaching the network by itself (updates, sync, field trials), and
every run gets a fresh profile.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
WAIT_S = 60


class BrowserMissing(RuntimeError):
    pass


@contextmanager
def chrome(width: int = 1280, height: int = 900):
    """A headless Chromium with a fresh profile, closed after the block."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            raise BrowserMissing(f"{path} is missing: apt-get install {package} (.ci/system-packages.txt)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout: float = WAIT_S, message: str = ""):
    """WebDriverWait for `condition(driver)` to be truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def open_page(driver, url: str) -> None:
    """Open the page and wait until its model menu is filled from GET /models."""
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.querySelectorAll('#model option').length > 0"),
         message="the model menu never filled")


def upload(driver, *paths: Path) -> None:
    driver.find_element("css selector", "#files").send_keys("\n".join(str(Path(p).resolve()) for p in paths))


def card_state(driver, name: str) -> dict | None:
    """What the page shows for the image file `name` (the newest card of that name)."""
    return driver.execute_script("""
        const card = [...document.querySelectorAll('#results .card')].find(c => c.querySelector('.name').textContent === arguments[0]);
        if (!card) return null;
        const overlay = card.querySelector('.overlay');
        const seen = (element) => getComputedStyle(element).display !== 'none';
        return {
          busy: card.getAttribute('aria-busy') === 'true',
          error: card.querySelector('.error').hidden ? null : card.querySelector('.error').textContent,
          labels: [...card.querySelectorAll('.labels li')].map(li => ({
            label: li.querySelector('.label').textContent, value: li.querySelector('.value').textContent,
            width: parseFloat(li.querySelector('.bar span').style.width)})),
          predicted: card.dataset.label || null,
          explained: card.dataset.explained || null,
          heatmapShown: seen(overlay) && overlay.complete && overlay.naturalWidth > 0,
          originalShown: seen(card.querySelector('.original')),
          timing: card.querySelector('.timing').textContent,
          note: card.querySelector('.heatmap-note').textContent,
        };
    """, name)


def wait_for_heatmap(driver, name: str, explained: str | None = None) -> dict:
    def done(d):
        state = card_state(d, name)
        if state and state["heatmapShown"] and (explained is None or state["explained"] == explained):
            return state
        return None

    return wait(driver, done, message=f"no heatmap{f' of {explained}' if explained else ''} for {name}")


def wait_for_error(driver, name: str) -> str:
    return wait(driver, lambda d: (card_state(d, name) or {}).get("error"), message=f"no error shown for {name}")


def pixel_spread(png: Path) -> float:
    """Standard deviation of the screenshot's pixel values: near 0 for a blank page."""
    with Image.open(png) as image:
        return float(np.asarray(image.convert("RGB"), dtype=np.float32).std())


def screenshot(url: str, images: list[Path], out: Path, *, width: int, height: int) -> None:
    with chrome(width, height) as driver:
        open_page(driver, url)
        upload(driver, *images)
        for image in images:
            wait_for_heatmap(driver, Path(image).name)
        driver.save_screenshot(str(out))
    print(f"{out}: {width}x{height}, pixel spread {pixel_spread(out):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.browser", description="Screenshot of GET /ui with images classified and explained.")
    parser.add_argument("url", help="the page, e.g. http://localhost:3000/ui")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/ui.png"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    screenshot(args.url, args.images, args.out, width=args.width, height=args.height)


if __name__ == "__main__":
    main()
