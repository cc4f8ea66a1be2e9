"""`bmbuild report --baseline`: each model next to a baseline (a summary.json or a git revision, as
`bmbuild diff` resolves it): the summary carries the comparison, report.html shows it per model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from test_report import NAMES, Page, write_crafted

PARAMS = {"int8": {"calibration": {"method": "kl"}, "tolerance": {"cos": 0.99}}}


def write_with_baseline(root: Path) -> Any:
    """The crafted models (good8 with recipe params) and a baseline in which good8's int8 cos was
    0.98 with another calibration method, broken had passed, and the fp32 model did not exist."""
    from bmbuild.report import write_report

    build = write_crafted(root)
    good = build / "good8" / "report.json"
    good.write_text(json.dumps({**json.loads(good.read_text()), "params": PARAMS}))
    base = copy.deepcopy(write_report(build, root / "base", NAMES, formats=["summary"]).summary)
    models = {m["name"]: m for m in base["models"]}
    models["good8"]["int8"]["cos"] = 0.98
    models["good8"]["params"] = {"int8": {"calibration": {"method": "minmax"}, "tolerance": {"cos": 0.99}}}
    models["broken"]["status"] = "passed"
    base["models"] = [m for m in base["models"] if m["name"] != "fp32 <b>&|only"]
    return write_report(build, root / "out", NAMES, baseline=("base/summary.json", base))


def test_the_summary_carries_each_models_baseline_comparison(tmp_path: Path) -> None:
    summary = write_with_baseline(tmp_path).summary
    assert summary["baseline"]["source"] == "base/summary.json"
    rows = summary["baseline"]["models"]
    good = rows["good8"]
    assert good["metrics"]["int8.cos"] == {"old": 0.98, "new": 0.993, "change": pytest.approx(0.013)}
    assert good["metrics"]["fp32.cos"]["change"] == 0
    assert good["params"] == {"int8.calibration.method": {"old": "minmax", "new": "kl"}}
    assert rows["broken"]["status"] == {"old": "passed", "new": "failed"}
    assert rows["fp32 <b>&|only"]["status"]["old"] is None
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["baseline"]["models"]["good8"]["params"] == good["params"]


def baseline_tables(html: str) -> dict[str, list[list[str]]]:
    """model -> rows of cell texts of its baseline table."""
    page = BaselinePage()
    page.feed(html)
    return page.tables


class BaselinePage(Page):
    """Also collects the cells of every table.baseline, by model."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._model: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        found = dict(attrs)
        if tag == "table" and found.get("class") == "baseline":
            self._model = found.get("data-model") or ""
            self.tables[self._model] = []
        elif tag == "tr" and self._model is not None:
            self.tables[self._model].append([])
        elif tag == "td" and self._model is not None:
            self._cell = [f"[{found.get('class') or ''}]"]

    def handle_endtag(self, tag: str) -> None:
        super().handle_endtag(tag)
        if tag == "table":
            self._model = None
        elif tag == "td" and self._model is not None and self._cell is not None:
            self.tables[self._model][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        super().handle_data(data)
        if self._cell is not None:
            self._cell.append(data)


def check_baseline_tables(html: str) -> None:
    """What report.html shows of the baseline (also checked on Chromium's DOM)."""
    assert "baseline: base/summary.json" in html
    tables = baseline_tables(html)
    assert set(tables) == {"good8", "cached", "broken"}  # the fp32 model is not in the baseline
    assert "not in the baseline" in html
    good = {row[0]: row[1:] for row in tables["good8"] if row}
    assert good["[]int8 cos"] == ["[n]0.980000", "[n]0.993000", "[n better]+0.013000"]
    assert good["[]param int8.calibration.method"] == ["[n mono]minmax", "[n mono]kl", "[]changed"]
    assert good["[]fp32 cos"][2] == "[n]+0.000000"
    assert good["[]int8 model bytes"][:2] == ["[n]1.5 KiB", "[n]1.5 KiB"]
    broken = {row[0]: row[1:] for row in tables["broken"] if row}
    assert broken["[]status"][:2] == ["[]passed", "[]failed"]


def test_report_html_shows_the_baseline_next_to_each_model(tmp_path: Path) -> None:
    written = write_with_baseline(tmp_path)
    check_baseline_tables(written.paths["html"].read_text())


def test_without_a_baseline_there_is_no_comparison(tmp_path: Path) -> None:
    from bmbuild.report import write_report

    written = write_report(write_crafted(tmp_path), tmp_path / "out", NAMES)
    assert "baseline" not in written.summary
    assert baseline_tables(written.paths["html"].read_text()) == {}


def test_cli_report_baseline_from_a_saved_summary(workspace, write_recipe, run_bmbuild) -> None:
    write_recipe("tiny")
    assert run_bmbuild("run", "recipes", "--report-dir", "base")[0] == 0
    write_recipe("tiny", fp32={"opt": 2})
    assert run_bmbuild("run", "recipes")[0] == 0
    code, out, err = run_bmbuild("report", "--baseline", "base", "--out", "now")
    assert code == 0, out + err
    assert "baseline: base/summary.json" in out
    summary = json.loads(Path("now/summary.json").read_text())
    row = summary["baseline"]["models"]["tiny"]
    assert row["params"] == {"fp32.opt": {"old": 1, "new": 2}}
    assert row["metrics"]["fp32.cos"]["old"] is not None
    tiny = {r[0]: r[1:] for r in baseline_tables(Path("now/report.html").read_text())["tiny"] if r}
    assert tiny["[]param fp32.opt"][:2] == ["[n mono]1", "[n mono]2"]
    code, _, err = run_bmbuild("report", "--baseline", "no-such-rev")
    assert code == 2 and "neither a summary.json nor a git revision" in err and "Traceback" not in err
