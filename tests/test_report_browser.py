"""report.html in a real browser: headless Chromium renders it (screenshot) and its DOM holds the
models table and one per-layer plot per int8 model.

Needs Debian's chromium (`apt-get install -y chromium`); skipped with that hint where it is missing.
"""

from __future__ import annotations

import json
import os
import re
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


# --- a model failing its int8 gate, next to one passing it by far --------------------------------
FAIL_LAYERS = [{"name": f"/l{i}/Conv_output_0", "node": f"/l{i}/Conv", "op": "Conv",
                "cos": 0.999 - 0.004 * i, "sqnr": 30.0 - 2 * i, "max_abs": 0.01} for i in range(10)]
FAR_LAYERS = [{"name": f"/f{i}/Conv_output_0", "node": f"/f{i}/Conv", "op": "Conv",
               "cos": 0.9999 - 0.0001 * i, "sqnr": 40.0, "max_abs": 0.001} for i in range(6)]
INT8_GATE = {"cos": 0.985, "euclid": 0.5, "sqnr": None, "max_abs": None, "top1": None}
FAIL_LOG = "# failing8:compile_int8 (no output yet)\ncmp int8 vs fp32 b1/output: cos=0.96\nFAILED: tolerance not met\n"


def write_int8_gate_reports(root: Path) -> Path:
    """failing8: compile_int8 failed its gate (its measured layers recorded); far8 passes by far."""
    from test_report import cmp, model, stage

    build = root / "build"
    log = build / "failing8" / "logs" / "compile_int8.log"
    log.parent.mkdir(parents=True)
    log.write_text(FAIL_LOG)
    done = {s: stage("executed") for s in ("trace", "compile_fp32", "calibrate", "quantize")}
    reports = [
        {**model("failing8", {**done, "compile_int8": stage(
            "failed", error="tolerance not met:\n  b1/output: cosine 0.960000 < 0.985", log=str(log),
            metrics={"cmp": cmp(0.96, 12.0), "layers": FAIL_LAYERS})}, ok=False), "int8_tolerance": INT8_GATE},
        {**model("far8", {**done, "compile_int8": stage("executed", metrics={"cmp": cmp(0.9999, 40.0),
                                                                            "layers": FAR_LAYERS})}),
         "int8_tolerance": INT8_GATE},
    ]
    for report in reports:
        path = build / report["name"] / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report))
    return build


def test_chromium_shows_the_failing_int8_model_against_its_gate(tmp_path: Path) -> None:
    from bmbuild.report import write_report

    page = write_report(write_int8_gate_reports(tmp_path), tmp_path / "out", ["failing8", "far8"]).paths["html"]
    result = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Page()
    dom.feed(result.stdout)
    assert dom.svgs == ["failing8", "far8"]  # the failing model has its per-layer chart
    bars = [attrs for tag, attrs in dom.tags if tag == "rect" and attrs.get("class") == "v"]
    red = [attrs["fill"] == "#cf222e" for attrs in bars]
    below = [layer["cos"] < INT8_GATE["cos"] for layer in FAIL_LAYERS]
    assert red == below + [False] * len(FAR_LAYERS)  # red exactly below the gate; none when all pass by far
    assert sum(1 for tag, attrs in dom.tags if tag == "line" and attrs.get("class") == "gate") == 2
    assert sum(1 for tag, attrs in dom.tags if tag == "circle" and attrs.get("class") == "sqnr") == 16
    text = "".join(dom.text)
    assert "gate cos 0.985" in text and "SQNR (dB)" in text
    assert f"{sum(below)} below the gate (cos ≥ 0.985" in text and "all within the gate (cos ≥ 0.985)" in text
    assert "no per-layer int8 data" not in text
    assert "cmp int8 vs fp32 b1/output: cos=0.96" in text  # the failing run's log tail
    # the far8 axis reaches down to the gate: its lowest tick is below 0.985
    far_svg = result.stdout[result.stdout.index('data-model="far8"'):]
    ticks = [float(t) for t in re.findall(r'class="tick"[^>]*>([0-9.]+)<', far_svg[:far_svg.index("</svg>")])
             if "." in t]
    assert min(ticks) < INT8_GATE["cos"]


def test_chromium_shows_the_baseline_next_to_each_model(tmp_path: Path) -> None:
    from test_report_baseline import check_baseline_tables, write_with_baseline

    page = write_with_baseline(tmp_path).paths["html"]
    result = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    check_baseline_tables(result.stdout)  # the DOM Chromium built, not only the file
    shot = tmp_path / "baseline.png"
    assert chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri(),
                    profile=tmp_path / "profile").returncode == 0
    assert shot.is_file() and shot.stat().st_size > 20_000
