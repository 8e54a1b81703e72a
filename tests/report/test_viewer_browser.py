"""The report's viewer in a real browser: headless Chromium driven by selenium.

Skips (with the install command) where Chromium, chromedriver or selenium is missing; CI
(``.ci/run``) installs them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

INSTALL = ("needs headless Chromium and selenium: apt-get install -y chromium chromium-driver && "
           "pip install -e '.[dev]' (selenium)")


def _browser_paths():
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").is_file() else None)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(INSTALL)
    chromium, driver = _browser_paths()
    if not chromium or not driver:
        pytest.skip(INSTALL)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(driver), options=opts)
    except Exception as exc:  # noqa: BLE001 - a browser that does not start is an environment problem
        pytest.skip(f"headless Chromium did not start ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                    f"{INSTALL}")
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of a tiny prediction: one synthetic volume (6 B-scans) through a tiny random model."""
    from conftest import make_tiny_checkpoint

    from octseg.cli import main
    from octseg.data.synthetic import write_synthetic_dataset

    tmp = tmp_path_factory.mktemp("viewer")
    ckpt = make_tiny_checkpoint(tmp / "tiny.ckpt")
    write_synthetic_dataset(tmp / "syn", volumes=1, vendors=["cirrus"], slices=6, scale=0.25, seed=0,
                            fluid_free_fraction=0.0, progress=False)
    assert main(["predict", str(ckpt), str(tmp / "syn"), str(tmp / "pred"), "--report"]) == 0
    return tmp / "pred" / "report.html"


def _wait(drv, js, timeout=10.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if drv.execute_script(js):
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {js}")


def _index(drv) -> int:
    return drv.execute_script("return window.octsegViewers[0].index")


def _status(drv) -> str:
    return drv.find_element("css selector", ".viewer .status").text


def _canvas_sum(drv) -> int:
    return drv.execute_script("""
        const c = document.querySelector('.viewer canvas.bscan');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7;
        return s;""")


def test_viewer_in_headless_chromium(browser, report, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    drv = browser
    drv.get_log("browser")  # drop anything from before
    drv.get(report.resolve().as_uri())
    _wait(drv, "return window.octsegViewers && window.octsegViewers.length > 0 && "
               "window.octsegViewers.every(v => v.ready())")
    drv.execute_script("window.octsegViewers[0].set(0)")
    severe = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    n = drv.execute_script("return window.octsegViewers[0].n")
    assert n == 6 and _index(drv) == 0 and "index 0" in _status(drv)

    # the slider: focus it and step with the arrow key (the range input's own keyboard handling)
    slider = drv.find_element("css selector", ".viewer input.slider")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
    drv.execute_script("arguments[0].value = 2; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert _index(drv) == 2 and "index 2" in _status(drv)
    slider.send_keys(Keys.ARROW_RIGHT)
    assert _index(drv) == 3

    # arrow keys on the page (after a click on the B-scan) step the viewer
    canvas = drv.find_element("css selector", ".viewer canvas.bscan")
    ActionChains(drv).move_to_element(canvas).click().perform()
    ActionChains(drv).send_keys(Keys.ARROW_RIGHT).perform()
    assert _index(drv) == 4 and "index 4" in _status(drv)
    ActionChains(drv).send_keys(Keys.ARROW_LEFT).send_keys(Keys.ARROW_LEFT).perform()
    assert _index(drv) == 2

    # the overlay toggle changes the drawn pixels (the random model paints fluid everywhere)
    before = _canvas_sum(drv)
    toggle = drv.find_element("css selector", ".viewer input.overlay")
    toggle.click()
    without = _canvas_sum(drv)
    assert without != before
    toggle.click()
    assert _canvas_sum(drv) == before

    # a click on the en-face map jumps to the B-scan under the pointer
    wrap = drv.find_element("css selector", ".viewer .enface-wrap")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", wrap)
    h = wrap.size["height"]
    target = 5
    ActionChains(drv).move_to_element_with_offset(wrap, 0, int((target + 0.5) / n * h - h / 2)).click().perform()
    assert _index(drv) == target and f"index {target}" in _status(drv)
    marker_top = drv.execute_script("return document.querySelector('.viewer .enface-wrap .marker').style.top")
    assert abs(float(marker_top.rstrip("%")) - 100 * (target + 0.5) / n) < 0.01  # the line marks it

    # B-scan switch time (draw + overlay) measured in the page
    times = drv.execute_script("""
        const v = window.octsegViewers[0], t = [];
        for (let r = 0; r < 4; r++) for (let i = 0; i < v.n; i++) t.push(v.set(i));
        t.sort((a, b) => a - b); return [t[Math.floor(t.length / 2)], t[t.length - 1]];""")
    print(f"\nB-scan switch time in headless Chromium: median {times[0]:.2f} ms, max {times[1]:.2f} ms")
    assert times[1] < 250, f"B-scan switch took {times[1]:.1f} ms (target 50 ms)"

    severe = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    shot = tmp_path / "viewer.png"
    drv.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
