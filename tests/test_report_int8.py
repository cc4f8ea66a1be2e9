"""The report where int8 fails: per-layer data of the failing run, the chart scaled to the gate
(red only below it), per-layer SQNR, and the log tail of the failing run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import Int8Workspace, ws8  # noqa: E402,F401

from test_report import parse_page  # noqa: E402

GATE_RED = "#cf222e"


def red_bars(html_path: Path, model: str) -> tuple[int, int]:
    """(red bars, all bars) of `model`'s per-layer chart."""
    text = html_path.read_text()
    svg = text[text.index(f'data-model="{model}"'):]
    svg = svg[:svg.index("</svg>")]
    bars = [part for part in svg.split("<rect")[1:] if 'class="v"' in part]
    return sum(1 for bar in bars if f'fill="{GATE_RED}"' in bar), len(bars)


def test_a_model_failing_its_int8_gate_gets_per_layer_data_and_its_own_log_tail(ws8: Int8Workspace) -> None:  # noqa: F811
    recipe = ws8.recipe()
    code, out, err = ws8.run("run", recipe, "--plain", "--report-dir", "out")
    assert code == 0, out + err
    passing = json.loads((ws8.root / "out" / "summary.json").read_text())["models"][0]["int8"]
    assert passing["gate"] == {"cos": 0.9} and passing["layers"]
    assert red_bars(ws8.root / "out" / "report.html", "tiny8")[0] == 0  # all pass by far: nothing red

    strict = 1 - (1 - passing["cos"]) / 2  # the output now fails the gate
    recipe = ws8.recipe(int8={"tolerance": {"cos": strict}})
    code, out, err = ws8.run("run", recipe, "--plain", "--report-dir", "out")
    assert code == 1 and "tolerance not met" in out, out + err
    model = json.loads((ws8.root / "out" / "summary.json").read_text())["models"][0]
    assert model["status"] == "failed"
    int8 = model["int8"]
    assert int8["gate"] == {"cos": strict}
    assert [layer["name"] for layer in int8["layers"]] == [layer["name"] for layer in passing["layers"]]
    assert all(isinstance(layer["sqnr"], float) for layer in int8["layers"])
    below = sum(1 for layer in int8["layers"] if layer["cos"] < strict)
    assert below > 0
    html = ws8.root / "out" / "report.html"
    assert red_bars(html, "tiny8") == (below, len(int8["layers"]))
    page = parse_page(html)
    assert page.svgs == ["tiny8"]
    assert sum(1 for tag, attrs in page.tags if tag == "circle" and attrs.get("class") == "sqnr") == len(int8["layers"])
    assert any(tag == "line" and attrs.get("class") == "gate" for tag, attrs in page.tags)
    text = "".join(page.text)
    assert "no per-layer int8 data" not in text and f"{below} below the gate (cos ≥ {strict:g}" in text
    # the log tail is this run's: the restored result, then why it fails now
    stage = next(s for s in model["stages"] if s["stage"] == "compile_int8")
    assert stage["outcome"] == "failed"
    tail = stage["log_tail"].splitlines()
    error_lines = len(stage["error"].splitlines())
    assert tail[-error_lines] == f"FAILED: {stage['error'].splitlines()[0]}"
    assert "this run restored the result above from the cache" in tail[-error_lines - 1]


def test_a_failure_before_the_stage_ran_shows_no_older_log(workspace, write_recipe, run_bmbuild, monkeypatch,
                                                           outcomes) -> None:
    from bmbuild.errors import BmbuildError
    from bmbuild.executor import Executor

    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    old_log = workspace / "build" / "tiny" / "logs" / "compile_fp32.log"
    assert "# done in" in old_log.read_text()
    real = Executor.decide

    def decide(self, node, upstream_outputs=None):  # e.g. an upstream output gone, a toolchain broken
        if node.stage.name == "compile_fp32":
            raise BmbuildError("cannot decide")
        return real(self, node, upstream_outputs)

    monkeypatch.setattr(Executor, "decide", decide)
    code, out, err = run_bmbuild("run", recipe, "--plain", "--force", "--report-dir", "out")
    assert code == 2 and "tiny:compile_fp32 failed: cannot decide" in out
    assert "log tail" not in out and "full log" not in out and "# done in" not in out
    model = json.loads((workspace / "out" / "summary.json").read_text())["models"][0]
    stage = next(s for s in model["stages"] if s["stage"] == "compile_fp32")
    assert stage["outcome"] == "failed" and stage["log"] == "" and stage["log_tail"] == ""
    assert "# done in" not in (workspace / "out" / "report.html").read_text()
