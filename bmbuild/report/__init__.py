"""Build reports for people and CI, made from the `build/<recipe>/report.json` files of a run.

`collect` (collect.py) turns the per-recipe reports into one summary (plain data); each format
of the registry (formats.py) renders that summary into one file, from one module each:

- `summary`  -> `summary.json` the summary itself (summary.py)
- `junit`    -> `junit.xml`    one <testsuite> per model, one <testcase> per stage (junit.py)
- `markdown` -> `summary.md`   a table and the failures' log tails, for $GITHUB_STEP_SUMMARY (markdown.py)
- `html`     -> `report.html`  one self-contained page: tables and hand-made inline SVG plots (html.py, svg.py)

With a baseline (`bmbuild report --baseline REV|summary.json`, resolved by bmbuild.diff), the
summary also holds, per model, the baseline's metrics, their changes and the changed recipe
parameters; report.html shows them in each model's section.

The package reads JSON files and the logs of failed stages only: no torch, onnx or numpy. Its
modules are imported when a report is written, so the CLI can list the formats cheaply.

Blocked stages (not run because an upstream stage of the same model failed) are JUnit
<skipped>, not <failure>: the upstream stage already carries the failure, with its error and
log; counting every stage below it again would multiply one cause into several failures and
bury the stage that needs fixing. The suite still fails, through that one failure.
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bmbuild.report.formats import FORMATS


@dataclass
class Written:
    summary: dict[str, Any]
    paths: dict[str, Path]


def write_report(build_dir: Path, out_dir: Path, names: list[str] | None = None,
                 not_run: Iterable[str] = (), formats: Iterable[str] | None = None,
                 baseline: tuple[str, dict[str, Any]] | None = None) -> Written:
    """The named models' reports into `out_dir`, in `formats` (names in FORMATS; default: all).

    `baseline` (description, summary), as `bmbuild diff` resolves it: the summary then carries,
    per model, the baseline's metrics, their changes and the changed parameters (bmbuild.diff)."""
    from bmbuild.atomic import atomic_write_bytes
    from bmbuild.errors import BmbuildError
    from bmbuild.report.collect import collect, report_files

    files = report_files(build_dir, names)
    if not files:
        raise BmbuildError(f"no report.json below {build_dir}: run `bmbuild run` first")
    summary = collect(files, not_run)
    if baseline is not None:
        from bmbuild.diff import diff_summaries

        source, base = baseline
        summary["baseline"] = {"source": source, "models": {row["name"]: row for row in diff_summaries(base, summary)}}
    paths = {}
    for kind in formats or FORMATS:
        paths[kind] = out_dir / FORMATS[kind].filename
        atomic_write_bytes(paths[kind], FORMATS[kind].render(summary))
    return Written(summary, paths)
