"""Reports (summary.json, junit.xml, summary.md, report.html) from build/<name>/report.json files.

Most tests use crafted report.json files (written below, no build needed):
- good8:    int8, every stage executed, fp32/int8 cmp, per-layer similarity, accuracy
- cached:   int8, stages restored from the cache or up to date (saved seconds, cache hits)
- broken:   int8, compile_fp32 failed (its log has colour codes, a control character, HTML and
            a Markdown fence in it), the three int8 stages blocked
- fp32 <b>&|only: fp32, passed; a name that needs escaping in every format
One test builds two tiny int8 recipes for real (one passing, one failing with blocked stages).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
XSD = FIXTURES / "junit.xsd"

# --- crafted reports -----------------------------------------------------------------------
GOOD_LAYERS = [
    {"name": f"/block{i}/Conv_output_0", "node": f"/block{i}/Conv", "op": "Conv" if i % 2 == 0 else "Relu",
     "cos": 0.9999 - 0.0003 * i, "sqnr": 40.0 - i, "max_abs": 0.01 * i}
    for i in range(12)
]
CACHED_LAYERS = [
    {"name": f"layer<{i}>", "node": f"n{i}", "op": "Gemm", "cos": 0.99 + 0.001 * i, "sqnr": 25.0, "max_abs": 0.1}
    for i in range(5)
]
LOG_TEXT = ("# broken:compile_fp32 (no output yet)\n"
            "exporting to ONNX\n"
            "\x1b[31mRuntimeError\x1b[0m: shapes <1x3> and <3x1> don't match \x07bell\n"
            "a | pipe and ``` a fence and <script>alert(1)</script>\n"
            "LAST LINE OF LOG\n")
ERROR = "tolerance not met:\n  b1/output: cosine 0.030252 < 0.99"


def stage(outcome: str, seconds: float = 1.0, saved: float = 0.0, summary: str = "", error: str = "",
          log: str = "", key: str = "k" * 64, metrics: dict[str, Any] | None = None,
          outputs: dict[str, int] | None = None, reason: str = "no output yet") -> dict[str, Any]:
    return {"node_id": "", "outcome": outcome, "reason": reason, "seconds": seconds, "saved_seconds": saved,
            "summary": summary, "error": error, "log": log, "key": key, "metrics": metrics or {},
            "outputs": outputs or {}}


def cmp(cos: float, sqnr: float, top1: float | None = None) -> dict[str, Any]:
    out = {"b1/output": {"cos": cos, "sqnr": sqnr, "euclid": 0.9, "max_abs": 0.1},
           "b4/output": {"cos": min(1.0, cos + 0.001), "sqnr": sqnr + 3, "euclid": 0.95, "max_abs": 0.1}}
    if top1 is not None:
        out["b1/output"]["top1"] = top1
        out["b4/output"]["top1"] = 1.0
    return out


def model(name: str, stages: dict[str, dict[str, Any]], prec: str = "INT8", ok: bool = True) -> dict[str, Any]:
    return {"name": name, "recipe": f"recipes/{name}.yaml", "toolchain": "reference", "target": "BM1684",
            "prec": prec, "batch_sizes": [1, 4], "ok": ok, "generated": "2024-05-01T12:00:00Z",
            "stages": stages}


def write_crafted(root: Path) -> Path:
    """Writes the four models' report.json (and broken's log) below root/build; returns build dir."""
    build = root / "build"
    log = build / "broken" / "logs" / "compile_fp32.log"
    log.parent.mkdir(parents=True)
    log.write_text(LOG_TEXT)
    reports = [
        model("good8", {
            "trace": stage("executed", 1.5, summary="traced == eager", outputs={"good8.pt": 2048}),
            "compile_fp32": stage("executed", 2.0, metrics={"cmp": cmp(0.999999, 120.0)},
                                  outputs={"good8.onnx": 4096, "good8.fp32.onnx": 4096}),
            "calibrate": stage("executed", 3.0, outputs={"good8_cali_table": 100}),
            "quantize": stage("executed", 0.5, outputs={"good8.int8.onnx": 1024}),
            "compile_int8": stage("executed", 2.5, summary="int8 cmp cos=0.9930",
                                  metrics={"cmp": cmp(0.993, 17.8, top1=0.875), "layers": GOOD_LAYERS,
                                           "eval": {"metric": "top1", "samples": 360, "fp32": 0.9944,
                                                    "int8": 0.9861, "drop_points": 0.83}},
                                  outputs={"1b.compilation/good8.int8.onnx": 1500}),
        }),
        model("cached", {
            "trace": stage("up-to-date", 0.01, reason="nothing changed", outputs={"cached.pt": 10}),
            "compile_fp32": stage("up-to-date", 0.01, reason="nothing changed", metrics={"cmp": cmp(1.0, 130.0)},
                                  outputs={"cached.onnx": 10}),
            "calibrate": stage("restored", 0.2, saved=7.5, reason="parameter method: 'kl' -> 'minmax'",
                               outputs={"t": 10}),
            "quantize": stage("restored", 0.1, saved=1.5, outputs={"q": 10}),
            "compile_int8": stage("restored", 0.1, saved=4.0, metrics={"cmp": cmp(0.998, 25.0),
                                                                        "layers": CACHED_LAYERS},
                                  outputs={"i": 10}),
        }),
        model("broken", {
            "trace": stage("executed", 1.25, outputs={"broken.pt": 10}),
            "compile_fp32": stage("failed", 0.0, error=ERROR, log=str(log), key=""),
            "calibrate": stage("blocked", 0.0, error="upstream failed: broken:compile_fp32", key=""),
            "quantize": stage("blocked", 0.0, error="upstream failed: broken:calibrate", key=""),
            "compile_int8": stage("blocked", 0.0, error="upstream failed: broken:quantize", key=""),
        }, ok=False),
        model("fp32 <b>&|only", {
            "trace": stage("executed", 0.5, outputs={"x.pt": 10}),
            "compile_fp32": stage("executed", 0.75, metrics={"cmp": cmp(0.99999, 110.0)}, outputs={"x.onnx": 10}),
        }, prec="FP32"),
    ]
    for report in reports:
        path = build / report["name"] / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report))
    return build


NAMES = ["good8", "cached", "broken", "fp32 <b>&|only"]


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    """The build dir holding the four crafted models."""
    return write_crafted(tmp_path)


@pytest.fixture
def written(crafted: Path, tmp_path: Path) -> Any:
    from bmbuild.report import write_report

    return write_report(crafted, tmp_path / "out", NAMES + ["never_built"])


def by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in summary["models"]}


# --- summary.json -----------------------------------------------------------------------------
def test_summary_json_has_every_model_stage_and_metric(written: Any) -> None:
    data = json.loads(written.paths["summary"].read_text())
    assert data == json.loads(json.dumps(written.summary))
    models = by_name(data)
    assert list(models) == NAMES + ["never_built"]
    assert {n: m["status"] for n, m in models.items()} == {
        "good8": "passed", "cached": "passed", "broken": "failed", "fp32 <b>&|only": "passed",
        "never_built": "not built"}
    assert data["ok"] is False
    assert data["totals"]["models"] == 5 and data["totals"]["passed"] == 3 and data["totals"]["failed"] == 1
    assert data["totals"]["stages"] == {"executed": 8, "restored": 3, "up-to-date": 2, "failed": 1, "blocked": 3}

    good = models["good8"]
    assert [s["stage"] for s in good["stages"]] == ["trace", "compile_fp32", "calibrate", "quantize", "compile_int8"]
    assert good["seconds"] == pytest.approx(9.5)
    assert good["output_bytes"] == 2048 + 4096 * 2 + 100 + 1024 + 1500
    assert good["stages"][1]["outputs"] == {"good8.onnx": 4096, "good8.fp32.onnx": 4096}
    assert good["stages"][0]["key"] == "k" * 64
    assert good["fp32"]["cos"] == pytest.approx(0.999999)
    assert good["int8"]["cos"] == pytest.approx(0.993) and good["int8"]["sqnr"] == pytest.approx(17.8)
    assert good["int8"]["top1"] == pytest.approx(0.875)
    assert [layer["name"] for layer in good["int8"]["layers"]] == [layer["name"] for layer in GOOD_LAYERS]
    assert good["accuracy"]["fp32"] == pytest.approx(0.9944) and good["accuracy"]["int8"] == pytest.approx(0.9861)

    cached = models["cached"]
    assert cached["counts"] == {"executed": 0, "restored": 3, "up-to-date": 2, "failed": 0, "blocked": 0}
    assert [s["cache_hit"] for s in cached["stages"]] == [False, False, True, True, True]
    assert cached["saved_seconds"] == pytest.approx(13.0)
    assert cached["stages"][2]["reason"] == "parameter method: 'kl' -> 'minmax'"

    broken = models["broken"]
    failed = broken["stages"][1]
    assert failed["outcome"] == "failed" and failed["error"] == ERROR
    assert failed["log_tail"].endswith("LAST LINE OF LOG") and "\x1b" not in failed["log_tail"]
    assert [s["outcome"] for s in broken["stages"][2:]] == ["blocked"] * 3
    assert broken["int8"] is None and broken["accuracy"] is None
    assert models["fp32 <b>&|only"]["int8"] is None
    assert "run `bmbuild run` first" in models["never_built"]["note"]


# --- junit.xml ----------------------------------------------------------------------------------
def test_junit_validates_against_the_schema(written: Any) -> None:
    xmlschema = pytest.importorskip("xmlschema", reason="pip install xmlschema (in the `test` extra)")
    schema = xmlschema.XMLSchema(str(XSD))
    schema.validate(str(written.paths["junit"]))
    # the schema is not vacuous: out-of-order children and a missing `tests` are refused
    bad = ('<testsuites><testsuite name="m"><testcase name="s"><failure/><skipped/></testcase>'
           '</testsuite></testsuites>')
    assert not schema.is_valid(bad)
    assert not schema.is_valid('<testsuites><testsuite name="m" tests="1" time="-1"/></testsuites>')


def test_junit_has_a_testcase_per_model_and_stage(written: Any) -> None:
    root = ET.parse(written.paths["junit"]).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("18", "1", "0")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == NAMES + ["never_built"]
    good = suites["good8"]
    assert (good.get("tests"), good.get("failures"), good.get("skipped")) == ("5", "0", "0")
    assert float(good.get("time")) == pytest.approx(9.5)
    cases = good.findall("testcase")
    assert [(c.get("classname"), c.get("name"), c.get("time")) for c in cases] == [
        ("good8", "trace", "1.500"), ("good8", "compile_fp32", "2.000"), ("good8", "calibrate", "3.000"),
        ("good8", "quantize", "0.500"), ("good8", "compile_int8", "2.500")]
    assert cases[0].find("system-out").text.startswith("executed")
    assert "saved 7.50s" in suites["cached"].findall("testcase")[2].find("system-out").text

    broken = suites["broken"]
    assert (broken.get("tests"), broken.get("failures"), broken.get("skipped")) == ("5", "1", "3")
    failure = broken.find("testcase[@name='compile_fp32']/failure")
    assert failure.get("message") == "tolerance not met: b1/output: cosine 0.030252 < 0.99"
    assert ERROR in failure.text and "LAST LINE OF LOG" in failure.text
    assert "compile_fp32.log" in failure.text
    assert "\x07" not in failure.text and "\x1b" not in failure.text  # not allowed in XML 1.0
    for name in ("calibrate", "quantize", "compile_int8"):
        skipped = broken.find(f"testcase[@name='{name}']/skipped")
        assert skipped is not None and skipped.get("message").startswith("blocked: upstream failed")
    never = suites["never_built"]
    assert never.get("skipped") == "1" and never.find("testcase/skipped") is not None


# --- summary.md -------------------------------------------------------------------------------------
def test_markdown_has_a_row_per_model_and_the_failures(written: Any) -> None:
    text = written.paths["markdown"].read_text()
    assert text.startswith("## bmbuild: 3 of 5 model(s) passed")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 5  # header + one per model
    header = [c.strip() for c in rows[0].strip("|").split(" | ")]
    assert header[:4] == ["model", "status", "executed / restored / up-to-date", "time"]
    cells = {re.sub(r"\*", "", row.split(" | ")[0][2:]): row for row in rows[1:]}
    good = cells["good8"]
    for expected in ("✅ passed", "5 / 0 / 0", "9.50s", "0.999999", "0.9930", "17.8 dB", "87.50%", "99.44%",
                     "98.61%"):
        assert expected in good, (expected, good)
    assert "0 / 3 / 2" in cells["cached"]
    assert "❌ failed" in cells["broken"]
    # the name's | is escaped (the row keeps its 10 columns) and its HTML is not markup
    odd = [row for row in rows if "fp32 &lt;b&gt;&amp;\\|only" in row]
    assert len(odd) == 1 and len(re.split(r"(?<!\\)\|", odd[0])) == len(re.split(r"(?<!\\)\|", rows[0]))
    # failures: collapsible, with the error and the log tail in a fence longer than the log's ```
    assert "### Failures" in text
    details = text[text.index("<details>"):text.index("</details>")]
    assert "<summary><b>broken · compile_fp32</b>: tolerance not met: b1/output" in details
    assert "````text" in details and "LAST LINE OF LOG" in details and ERROR in details
    assert "broken: blocked by the failure above: calibrate, quantize, compile_int8" in text
    assert "never_built" in text.split("### Failures")[1]


# --- report.html ------------------------------------------------------------------------------------
class Page(HTMLParser):
    """Collects tags, svg elements with their data-model, <title> texts inside svgs, and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.svgs: list[str | None] = []
        self.svg_titles: list[str] = []
        self.text: list[str] = []
        self._in_svg = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "svg":
            self._in_svg += 1
            self.svgs.append(dict(attrs).get("data-model"))
        if tag == "title" and self._in_svg:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg -= 1
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.svg_titles.append(data)


def parse_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def test_html_is_one_self_contained_page_with_a_plot_per_int8_model(written: Any) -> None:
    page = parse_page(written.paths["html"])
    names = [t for t, _ in page.tags]
    assert names[0] == "html" and names.count("style") >= 1
    # nothing external: no scripts, stylesheets, images, fonts or links off the page
    assert "script" not in names and "link" not in names and "img" not in names and "iframe" not in names
    for tag, attrs in page.tags:
        for attr in ("src", "href"):
            assert not attrs.get(attr) or attrs[attr].startswith("#"), (tag, attrs)
    assert "url(" not in written.paths["html"].read_text()
    # the models table: a row per model with its link, status and numbers
    table = [attrs for t, attrs in page.tags if t == "table" and attrs.get("id") == "models"]
    assert table
    text = "".join(page.text)
    for expected in ("good8", "cached", "broken", "fp32 <b>&|only", "never_built", "0.9930", "17.8 dB",
                     "99.44%", "98.61%", "12.6 KiB", "5/5 hit", "blocked", "LAST LINE OF LOG"):
        assert expected in text, expected
    # one svg per int8 model with per-layer data, every layer named on hover in graph order
    assert page.svgs == ["good8", "cached"]
    bar_titles = [t for t in page.svg_titles if t.startswith("#")]
    assert len(bar_titles) == len(GOOD_LAYERS) + len(CACHED_LAYERS)
    assert [t.split("\n")[0] for t in bar_titles[:3]] == [f"#{i} {GOOD_LAYERS[i]['name']}" for i in range(3)]
    assert any("layer<3>" in t for t in bar_titles)  # decoded back from &lt;...&gt;


def test_html_escapes_every_text(written: Any) -> None:
    raw = written.paths["html"].read_text()
    assert "<script>" not in raw and "<b>&|only" not in raw
    assert "fp32 &lt;b&gt;&amp;|only" in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "layer&lt;3&gt;" in raw


# --- CLI -----------------------------------------------------------------------------------------
def test_report_command_writes_all_four_files(crafted: Path, tmp_path: Path, run_bmbuild: Any) -> None:
    out = tmp_path / "reports"
    code, stdout, stderr = run_bmbuild("report", "--build-dir", crafted, "--out", out)
    assert code == 0, stdout + stderr
    assert "3 of 4 model(s) passed" in stdout  # every built model below build/
    for name in ("summary.json", "junit.xml", "summary.md", "report.html"):
        assert (out / name).is_file() and str(out / name) in stdout


def test_report_command_selects_recipes_and_defaults_to_build_reports(workspace: Path, write_recipe: Any,
                                                                      run_bmbuild: Any) -> None:
    write_crafted(workspace)
    recipe = write_recipe("good8")
    code, stdout, stderr = run_bmbuild("report", recipe)
    assert code == 0, stdout + stderr
    summary = json.loads((workspace / "build" / "reports" / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["good8"]


def test_report_without_any_build_is_a_user_error(workspace: Path, run_bmbuild: Any) -> None:
    code, stdout, stderr = run_bmbuild("report")
    assert code == 2 and "run `bmbuild run` first" in stderr and "Traceback" not in stderr


def test_report_module_imports_no_heavy_library() -> None:
    code = ("import sys, bmbuild.report; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real build ------------------------------------------------------------------------------------
@pytest.fixture
def real_reports(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> Path:
    """Two tiny int8 recipes built with `run -k --report-dir`: ok8 passes; bad8's fp32 gate fails."""
    sys.path.insert(0, str(FIXTURES / "int8"))
    from int8_support import Int8Workspace

    root = tmp_path_factory.mktemp("real") / "ws"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "int8_models.py").write_text((FIXTURES / "int8" / "int8_models.py").read_text())
    monkeypatch.setenv("BMBUILD_CACHE_DIR", str(root.parent / "cache"))
    monkeypatch.chdir(root)
    ws = Int8Workspace(root, capsys)
    ok = ws.recipe("ok8")
    bad = ws.recipe("bad8", fp32={"tolerance": {"sqnr": 500.0}})
    code, out, err = ws.run("run", ok, bad, "--plain", "-k", "--report-dir", root / "rep")
    assert code == 1, out + err
    assert f"report: {root / 'rep' / 'report.html'}" in out
    return root / "rep"


def test_real_run_report(real_reports: Path) -> None:
    summary = json.loads((real_reports / "summary.json").read_text())
    models = by_name(summary)
    assert models["ok8"]["status"] == "passed" and models["bad8"]["status"] == "failed"
    ok8 = models["ok8"]
    assert ok8["counts"]["executed"] == 5
    assert all(s["output_bytes"] > 0 and len(s["key"]) == 64 for s in ok8["stages"])
    assert 0.5 < ok8["int8"]["cos"] <= 1.0 and ok8["fp32"]["cos"] > 0.999
    assert len(ok8["int8"]["layers"]) >= 3
    bad8 = models["bad8"]
    assert [s["outcome"] for s in bad8["stages"]] == ["executed", "failed", "blocked", "blocked", "blocked"]
    assert "SQNR" in bad8["stages"][1]["error"] and bad8["stages"][1]["log_tail"]
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(str(XSD)).validate(str(real_reports / "junit.xml"))
    assert parse_page(real_reports / "report.html").svgs == ["ok8"]
    assert "| **bad8** | ❌ failed |" in (real_reports / "summary.md").read_text()
