"""The HTML pages in a real browser: headless Chromium loads every image, logs no error, and
takes a screenshot. Skipped where Chromium is not installed (CI installs Debian's chromium).

Also a small command for the docs' screenshots:

    python tests/test_browser.py PAGE.html SHOT.png [WIDTH HEIGHT]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]

# Injected first into <head>: records script errors, failed resource loads (error events
# captured on the window) and console.error / console.warn, then after the load event writes
# the image check and what it recorded into the DOM, where --dump-dom shows it.
CHECK_SCRIPT = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  var what = e.message || (e.target && (e.target.currentSrc || e.target.src || e.target.tagName)) || 'unknown';
  window.__problems.push('error: ' + String(what).slice(0, 120));
}, true);
['error', 'warn'].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__problems.push('console.' + level + ': ' + Array.prototype.join.call(arguments, ' '));
    original.apply(console, arguments);
  };
});
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var pre = document.createElement('pre');
  pre.id = 'vaelab-check';
  pre.textContent = JSON.stringify({images: images.length, broken: broken.map(function (i) { return i.alt; }),
                                    problems: window.__problems});
  document.body.appendChild(pre);
});
</script>"""


def run_chromium(args: list[str], profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def check_page(page: Path, work: Path) -> dict:
    """Open ``page`` with the check script injected; its verdict plus console lines Chromium logged."""
    text = page.read_text(encoding="utf-8")
    assert "<head>" in text
    checked = page.parent / f"checked-{page.name}"
    checked.write_text(text.replace("<head>", "<head>" + CHECK_SCRIPT, 1), encoding="utf-8")
    done = run_chromium(["--virtual-time-budget=10000", "--dump-dom", checked.as_uri()], work / "profile-dom")
    found = re.search(r'<pre id="vaelab-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the check did not run (exit {done.returncode}): {done.stderr[-2000:]}"
    verdict = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    verdict["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return verdict


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 2000, profile: Path | None = None) -> Path:
    with tempfile.TemporaryDirectory(prefix="vaelab-chromium-") as tmp:
        done = run_chromium([f"--screenshot={out}", f"--window-size={width},{height}", page.resolve().as_uri()],
                            profile or Path(tmp) / "profile")
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return out


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    from test_report import tiny_report

    return tiny_report(tmp_path_factory)


@needs_chromium
def test_report_loads_every_image_without_errors(report_page, tmp_path):
    from vaelab.figures import FIGURES

    verdict = check_page(report_page, tmp_path)
    assert verdict["images"] == len(FIGURES) + 1  # every figure and the progress GIF
    assert verdict["broken"] == []
    assert verdict["problems"] == [] and verdict["console"] == []


@needs_chromium
def test_comparison_page_loads_every_image_without_errors(tmp_path_factory, tmp_path):
    from test_report import tiny_comparison

    verdict = check_page(tiny_comparison(tmp_path_factory) / "compare.html", tmp_path)
    assert verdict["images"] == 7 and verdict["broken"] == []
    assert verdict["problems"] == [] and verdict["console"] == []


@needs_chromium
def test_report_screenshot(report_page, tmp_path):
    import numpy as np
    from PIL import Image

    shot = screenshot(report_page, tmp_path / "report.png", 1000, 1400, profile=tmp_path / "profile")
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1000, 1400)
        pixels = np.asarray(image.convert("L"))
    # a rendered page: mostly white background, with dark text and figures on it
    assert (pixels > 240).mean() > 0.4 and (pixels < 100).mean() > 0.005


@needs_chromium
def test_the_check_catches_broken_images_and_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body>"
                    "<img alt='bad' src='data:image/png;base64,AAAA'><img alt='missing' src='missing.png'>"
                    "<script>console.error('boom'); notDefined();</script></body></html>")
    verdict = check_page(page, tmp_path)
    assert verdict["images"] == 2 and sorted(verdict["broken"]) == ["bad", "missing"]
    assert "console.error: boom" in verdict["problems"]
    assert any("notDefined" in p for p in verdict["problems"])
    assert verdict["console"]  # Chromium's own log saw them too


if __name__ == "__main__":  # python tests/test_browser.py PAGE.html SHOT.png [WIDTH HEIGHT]
    if CHROMIUM is None:
        sys.exit("chromium is not installed")
    size = [int(v) for v in sys.argv[3:5]] or [1280, 2000]
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2]).resolve(), *size))
