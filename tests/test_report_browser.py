"""report.html in a real browser: headless Chromium renders it (screenshot) and its DOM holds the
models table and one per-layer plot per int8 model.

Needs Debian's chromium (`apt-get install -y chromium`); skipped with that hint where it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_report import NAMES, Page, write_crafted

FAILED_RED = (0xCF, 0x22, 0x2E)  # the `failed` pill and status colour in report.html


def find_browser() -> str | None:
    """$BMBUILD_CHROMIUM, else /usr/bin/chromium, else chromium or google-chrome on PATH."""
    candidates = [os.environ.get("BMBUILD_CHROMIUM"), "/usr/bin/chromium",
                  shutil.which("chromium"), shutil.which("google-chrome")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


BROWSER = find_browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="/usr/bin/chromium missing: install it with `apt-get install -y chromium` "
           "(or set BMBUILD_CHROMIUM) to run the headless-browser check of report.html")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bmbuild.report import write_report

    root = tmp_path_factory.mktemp("browser")
    return write_report(write_crafted(root), root / "out", NAMES).paths["html"]


def test_chromium_dom_has_the_models_table_and_the_plots(page: Path, tmp_path: Path) -> None:
    result = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Page()
    dom.feed(result.stdout)
    tables = [attrs for tag, attrs in dom.tags if tag == "table" and attrs.get("id") == "models"]
    assert tables, result.stdout[:2000]
    rows_text = "".join(dom.text)
    for name in NAMES:
        assert name in rows_text
    assert dom.svgs == ["good8", "cached"]
    assert sum(1 for tag, attrs in dom.tags if tag == "rect" and attrs.get("class") == "v") == 12 + 5


def test_chromium_screenshot_renders_the_page(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "out.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1280,900", page.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1280, 900)
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and pills, not a blank page
    near_red = sum(n for n, (r, g, b) in colours
                   if abs(r - FAILED_RED[0]) + abs(g - FAILED_RED[1]) + abs(b - FAILED_RED[2]) < 30)
    assert near_red > 100, "the failed model's red status is not on screen"
