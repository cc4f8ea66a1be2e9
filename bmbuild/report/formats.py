"""The report formats, in one registry: `write_report` writes them and the CLI offers them.

A format is a module of this package with `render(summary) -> bytes`, imported when the format
is written: the CLI reads this registry to build its options without importing any renderer.
A new format is one module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReportFormat:
    name: str         # as `bmbuild report --format` names it
    filename: str     # the file it is written to
    module: str       # bmbuild.report.<module>.render makes its bytes
    description: str

    def render(self, summary: dict[str, Any]) -> bytes:
        return importlib.import_module(f"bmbuild.report.{self.module}").render(summary)


FORMATS: dict[str, ReportFormat] = {fmt.name: fmt for fmt in (
    ReportFormat("summary", "summary.json", "summary", "the whole summary as JSON"),
    ReportFormat("junit", "junit.xml", "junit", "one testsuite per model, one testcase per stage"),
    ReportFormat("markdown", "summary.md", "markdown", "a table and the failures' log tails"),
    ReportFormat("html", "report.html", "html", "one self-contained page with per-layer plots"),
)}


def file_list() -> str:
    """'summary.json, junit.xml, summary.md and report.html': the files of every format, for help texts."""
    names = [fmt.filename for fmt in FORMATS.values()]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
