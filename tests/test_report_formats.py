"""The report formats come from one registry (bmbuild.report.formats): `bmbuild report --format`
offers exactly its names and writes the chosen formats only, each to its registered file."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from test_report import write_crafted


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    return write_crafted(tmp_path)


def test_format_option_writes_only_the_chosen_formats(crafted: Path, tmp_path: Path, run_bmbuild: Any) -> None:
    out = tmp_path / "reports"
    code, stdout, stderr = run_bmbuild("report", "--build-dir", crafted, "--out", out,
                                       "--format", "junit", "--format", "markdown")

    assert code == 0, stdout + stderr
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "summary.md"]
    assert len(ET.parse(out / "junit.xml").getroot().findall("testsuite")) == 4
    assert (out / "summary.md").read_text().startswith("## bmbuild: 3 of 4 model(s) passed")
    assert str(out / "junit.xml") in stdout and str(out / "summary.md") in stdout


def test_format_choices_and_files_come_from_the_registry(crafted: Path, tmp_path: Path, run_bmbuild: Any,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from bmbuild.report.formats import FORMATS, ReportFormat

    monkeypatch.setitem(FORMATS, "copy", ReportFormat("copy", "copy.json", "summary", "a second summary"))
    out = tmp_path / "reports"

    code, stdout, stderr = run_bmbuild("report", "--build-dir", crafted, "--out", out, "--format", "copy")
    assert code == 0, stdout + stderr
    assert [p.name for p in out.iterdir()] == ["copy.json"]
    assert json.loads((out / "copy.json").read_text())["totals"]["models"] == 4

    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        run_bmbuild("report", "--build-dir", crafted, "--out", out, "--format", "pdf")
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "invalid choice: 'pdf'" in stderr
    assert all(repr(name) in stderr for name in ("summary", "junit", "markdown", "html", "copy")), stderr


def test_every_registered_format_writes_its_file(crafted: Path, tmp_path: Path) -> None:
    from bmbuild.report import write_report
    from bmbuild.report.formats import FORMATS

    written = write_report(crafted, tmp_path / "all")

    assert {kind: path.name for kind, path in written.paths.items()} == {
        name: fmt.filename for name, fmt in FORMATS.items()}
    assert all(path.stat().st_size > 0 for path in written.paths.values())
