"""The remote cache's last build of each recipe, for `bmbuild diff --remote` (like `dvc metrics diff`
against a remote).

A remote cache holds objects and action entries, which say nothing about "the build of recipe X".
So a run with a remote cache also writes, per recipe whose stages it ran (not only restored) and
which passed, a small record of that build next to them (as does `bmbuild cache push` for the
passed models of the workspace whose stage results it uploaded):

    builds/ab/<sha256 of the recipe name>.json   {"kind", "format", "name", "written", "bmbuild", "model"}

`model` is the recipe's entry of the report summary (bmbuild.report.collect), cut to what `diff`
compares: status, resolved parameters, fp32/int8 similarity, accuracy, stage outcomes and sizes.
The next such build of the same recipe name, from any workspace, replaces it: it is the last one.
It is written like every store file, atomically (one PUT on object stores, a renamed temp file
elsewhere). Read back it is input from others: size-limited, parsed, checked for that shape, and
free of control characters (it is printed on terminals); a bad record is a `BadRecord` error
naming the recipe and the file, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bmbuild import __version__
from bmbuild.errors import BmbuildError

if TYPE_CHECKING:
    from bmbuild.store import FsStore

KIND = "bmbuild-build-record"
FORMAT = 1
BUILDS = "builds"
MAX_BYTES = 1 << 20          # a record is a few kB; a bigger one is not ours
MAX_DEPTH = 24               # nesting of the parameters (a recipe has a handful of levels)
NUMBER_SECTIONS = ("fp32", "int8", "accuracy")
STATUSES = ("passed", "failed", "not built")


class BadRecord(BmbuildError):
    """A build record on the remote that bmbuild did not write (corrupt, truncated, hostile)."""


def record_name(recipe: str) -> str:
    """Where the record of a recipe lives below the store root (a digest: any name is a safe path)."""
    digest = hashlib.sha256(recipe.encode()).hexdigest()
    return f"{BUILDS}/{digest[:2]}/{digest}.json"


# --- writing --------------------------------------------------------------------------------
def _numbers(section: Any) -> dict[str, float] | None:
    if not isinstance(section, dict):
        return None
    return {k: v for k, v in section.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def compact(model: dict[str, Any]) -> dict[str, Any]:
    """A summary model entry cut to what `diff` compares (no logs, no per-layer data)."""
    return {
        "name": model["name"], "status": model["status"],
        **{k: str(model.get(k) or "") for k in ("toolchain", "target", "prec")},
        "params": model.get("params") or {},
        **{section: _numbers(model.get(section)) for section in NUMBER_SECTIONS},
        "stages": [{"stage": s["stage"], "outcome": s["outcome"], "output_bytes": s["output_bytes"],
                    "key": s.get("key") or ""} for s in model.get("stages") or []],
    }


def record_bytes(model: dict[str, Any]) -> bytes:
    return json.dumps({"kind": KIND, "format": FORMAT, "name": model["name"], "bmbuild": __version__,
                       "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "model": compact(model)}, sort_keys=True, indent=1).encode()


def publishable(records: list[Any]) -> list[str]:
    """The recipes of a run whose build goes on the remote: at least one stage ran, none failed."""
    from bmbuild.pipeline import OK_OUTCOMES, Outcome

    by_recipe: dict[str, list[Any]] = {}
    for record in records:
        by_recipe.setdefault(record.recipe, []).append(record)
    return [name for name, mine in by_recipe.items()
            if any(r.outcome == Outcome.EXECUTED for r in mine) and all(r.outcome in OK_OUTCOMES for r in mine)]


def publish_builds(build: Any, records: list[Any], store: Any) -> int:
    """Write the record of each publishable recipe of a run to the run's remote cache (a TieredStore
    whose remote is still writable; else nothing). A failed write warns and stops; returns how many
    records were written."""
    from bmbuild.project import read_report

    remote = getattr(store, "remote", None)
    if remote is None or not getattr(store, "can_push", False):
        return 0
    reports = {name: read_report(build.workspace.report_path(name)) for name in publishable(records)}
    return _write(remote, {name: report for name, report in reports.items() if report}, store.warn)


def publish_pushed(build_dir: Path, remote: FsStore, keys: list[str], warn: Callable[[str], None]) -> int:
    """After `bmbuild cache push`: the record of each model built in `build_dir` that passed and whose
    stage results this push uploaded (a build made without the remote, published now)."""
    from bmbuild.project import read_report
    from bmbuild.report.collect import report_files

    pushed = set(keys)
    reports = {name: read_report(path) for name, path in report_files(build_dir)}
    return _write(remote, {name: report for name, report in reports.items() if report and report.get("ok")
                           and any(isinstance(stage, dict) and stage.get("key") in pushed
                                   for stage in report["stages"].values())}, warn)


def _write(remote: FsStore, reports: dict[str, dict[str, Any]], warn: Callable[[str], None]) -> int:
    """The records of these recipes' report.json; the first failed write warns and stops."""
    from bmbuild.report.collect import model_summary
    from bmbuild.store import describe

    for written, (name, report) in enumerate(reports.items()):
        try:
            remote.put_named(record_name(name), record_bytes(model_summary(report)))
        except Exception as exc:
            warn(f"remote cache {remote.url}: the build record of {name} cannot be written "
                 f"({describe(exc)}); `bmbuild diff --remote` will not see this build")
            return written
    return len(reports)


# --- reading --------------------------------------------------------------------------------
def _has_control(text: str) -> bool:
    return any(ord(c) < 32 and c not in "\n\t" or 127 <= ord(c) < 160 for c in text)


def _check_strings(value: Any, depth: int = 0) -> str | None:
    """Why `value` (parsed JSON) is not plain data: too deep, or a control character in a string."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        return f"control characters in {value[:40]!r}" if _has_control(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = (_check_strings(key, depth + 1) if isinstance(key, str) else None) or _check_strings(item, depth + 1)
        if problem:
            return problem
    return None


def _shape_problem(doc: Any, name: str) -> str | None:
    """Why a parsed record is not one of ours for recipe `name` (None when it is)."""
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        return "not a bmbuild build record"
    if doc.get("format") != FORMAT:
        return f"record format {doc.get('format')!r}; this bmbuild reads format {FORMAT}"
    model = doc.get("model")
    if doc.get("name") != name or not isinstance(model, dict) or model.get("name") != name:
        return f"not the record of {name!r}"
    checks: list[tuple[str, Callable[[Any], bool]]] = [
        ("status", lambda v: v in STATUSES),
        ("params", lambda v: isinstance(v, dict)),
        ("stages", lambda v: isinstance(v, list) and all(
            isinstance(s, dict) and isinstance(s.get("stage"), str) and isinstance(s.get("outcome"), str)
            and isinstance(s.get("output_bytes"), int) for s in v)),
        *((section, lambda v: v is None or (isinstance(v, dict) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())))
          for section in NUMBER_SECTIONS),
    ]
    for key, valid in checks:
        if not valid(model.get(key)):
            return f"model.{key} is not what bmbuild writes"
    return _check_strings(doc)


def parse_record(data: bytes, name: str, where: str) -> dict[str, Any]:
    """The model entry of a record read back from `where`; raises BadRecord when it is not ours."""
    problem = None
    doc = None
    if len(data) > MAX_BYTES:
        problem = f"{len(data)} bytes, more than a record's {MAX_BYTES}"
    else:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            problem = f"not JSON ({str(exc)[:80]})"
    problem = problem or _shape_problem(doc, name)
    if problem:
        raise BadRecord(f"{where}: the build record of {name} is unreadable ({problem}); a new build of it with "
                        "the remote cache replaces it (`bmbuild run --force` with --remote-cache)")
    assert isinstance(doc, dict)
    return {**doc["model"], "written": str(doc.get("written", ""))}


def remote_summary(remote: FsStore, names: list[str]) -> dict[str, Any]:
    """A summary (as `diff` compares) of the remote's last build of each named recipe; a recipe with
    no record is left out (absent in the baseline)."""
    models = []
    for name in names:
        where = f"remote cache {remote.url}: {record_name(name)}"
        data = remote.get_named(record_name(name), MAX_BYTES)
        if data is not None:
            models.append(parse_record(data, name, where))
    return {"models": models}


def remote_baseline(workspace: Any, names: list[str]) -> tuple[str, dict[str, Any]]:
    """(description, summary) of the remote cache's last build of each named recipe, for bmbuild.diff."""
    remote = workspace.open_remote()
    summary = remote_summary(remote, names)
    when = ", ".join(f"{m['name']} {m['written']}" for m in summary["models"])
    return f"remote cache {remote.url}, last builds ({when or 'none of these recipes'})", summary
