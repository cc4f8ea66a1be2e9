"""Build reports for people and CI, made from the `build/<recipe>/report.json` files of a run.

`collect` turns the per-recipe reports into one summary (plain data, written as `summary.json`);
each renderer turns that summary into one format:

- `junit_xml`  -> `junit.xml`   one <testsuite> per model, one <testcase> per stage
- `markdown`   -> `summary.md`  a table and the failures' log tails, for $GITHUB_STEP_SUMMARY
- `html`       -> `report.html` one self-contained page: tables and hand-made inline SVG plots

This module reads JSON files and the logs of failed stages only: no torch, onnx or numpy.

Blocked stages (not run because an upstream stage of the same model failed) are JUnit
<skipped>, not <failure>: the upstream stage already carries the failure, with its error and
log; counting every stage below it again would multiply one cause into several failures and
bury the stage that needs fixing. The suite still fails, through that one failure.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

from bmbuild import __version__
from bmbuild.cache import atomic_write_bytes
from bmbuild.errors import BmbuildError
from bmbuild.stages import STAGE_MODULES

SUMMARY_FORMAT = 1
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 8000
OK_OUTCOMES = ("executed", "restored", "up-to-date")
OUTCOMES = ("executed", "restored", "up-to-date", "failed", "blocked")
INT8_STAGES = ("calibrate", "quantize", "compile_int8")
STAGE_LABELS = {"trace": "trace", "compile_fp32": "fp32", "calibrate": "calib", "quantize": "quant",
                "compile_int8": "int8"}
FILES = {"summary": "summary.json", "junit": "junit.xml", "markdown": "summary.md", "html": "report.html"}


class ModelStatus(Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_BUILT = "not built"


# --- collecting ---------------------------------------------------------------------------
def report_files(build_dir: Path, names: list[str] | None = None) -> list[tuple[str, Path]]:
    """(name, build/<name>/report.json) of the named recipes, or of every built one."""
    if names is not None:
        return [(name, build_dir / name / "report.json") for name in names]
    return [(path.parent.name, path) for path in sorted(build_dir.glob("*/report.json"))]


def collect(files: list[tuple[str, Path]], not_run: Iterable[str] = ()) -> dict[str, Any]:
    """The summary of the models whose report.json files are given.

    A missing file, or a model in `not_run` (selected but not reached by this run: a stale
    report.json must not pass for a fresh one), is listed with status "not built".
    """
    skipped = set(not_run)
    models = []
    for name, path in files:
        if name in skipped:
            models.append(_not_built(name, "not run in this build (the build stopped at an earlier "
                                           "failure; use --keep-going to build every model)"))
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            models.append(_not_built(name, f"no {path}: run `bmbuild run` first"))
            continue
        except (OSError, ValueError) as exc:
            raise BmbuildError(f"{path}: unreadable report ({exc})") from None
        models.append(model_summary(data))
    totals: dict[str, Any] = {"models": len(models)}
    for status in ModelStatus:
        totals[status.value] = sum(1 for m in models if m["status"] == status.value)
    totals["stages"] = {o: sum(m["counts"][o] for m in models) for o in OUTCOMES}
    totals["seconds"] = sum(m["seconds"] for m in models)
    totals["saved_seconds"] = sum(m["saved_seconds"] for m in models)
    return {
        "format": SUMMARY_FORMAT,
        "bmbuild": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ok": totals[ModelStatus.PASSED.value] == len(models),
        "totals": totals,
        "models": models,
    }


def _not_built(name: str, note: str) -> dict[str, Any]:
    return {"name": name, "status": ModelStatus.NOT_BUILT.value, "note": note, "stages": [],
            "counts": {o: 0 for o in OUTCOMES}, "seconds": 0.0, "saved_seconds": 0.0, "output_bytes": 0,
            "fp32": None, "int8": None, "accuracy": None}


def stage_order(names: Iterable[str]) -> list[str]:
    """Pipeline order; stages this version does not know go last, by name."""
    known = [s for s in STAGE_MODULES if s in names]
    return known + sorted(set(names) - set(known))


def model_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One model's entry of the summary, from its report.json."""
    raw = report.get("stages", {})
    stages = [stage_summary(name, raw[name]) for name in stage_order(raw)]
    counts = {o: sum(1 for s in stages if s["outcome"] == o) for o in OUTCOMES}
    failed = counts["failed"] + counts["blocked"] > 0 or not report.get("ok", True)
    metrics = {s["stage"]: raw[s["stage"]].get("metrics") or {} for s in stages}
    return {
        "name": report.get("name", "?"),
        "recipe": report.get("recipe", ""),
        "toolchain": report.get("toolchain", ""),
        "target": report.get("target", ""),
        "prec": report.get("prec", ""),
        "batch_sizes": report.get("batch_sizes", []),
        "generated": report.get("generated", ""),
        "status": (ModelStatus.FAILED if failed else ModelStatus.PASSED).value,
        "note": "",
        "counts": counts,
        "seconds": sum(s["seconds"] for s in stages),
        "saved_seconds": sum(s["saved_seconds"] for s in stages),
        "output_bytes": sum(s["output_bytes"] for s in stages),
        "stages": stages,
        "fp32": _similarity(metrics.get("compile_fp32", {}).get("cmp")),
        "int8": _int8(metrics.get("compile_int8", {}), report.get("int8_tolerance")),
        "accuracy": metrics.get("compile_int8", {}).get("eval") or None,
        "params": report.get("params") if isinstance(report.get("params"), dict) else {},  # bmbuild diff
    }


def stage_summary(name: str, record: dict[str, Any]) -> dict[str, Any]:
    outputs = record.get("outputs") or {}
    outcome = record.get("outcome", "")
    entry = {
        "stage": name,
        "outcome": outcome,
        "reason": record.get("reason", ""),
        "seconds": float(record.get("seconds") or 0.0),
        "saved_seconds": float(record.get("saved_seconds") or 0.0),
        "cache_hit": outcome == "restored",
        "outputs": outputs,
        "output_bytes": sum(outputs.values()),
        "key": record.get("key", ""),
        "summary": record.get("summary", ""),
        "error": record.get("error", ""),
        "log": record.get("log", ""),
        "log_tail": "",
    }
    if outcome == "failed" and entry["log"]:
        entry["log_tail"] = log_tail(Path(entry["log"]))
    return entry


ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, terminal colour codes removed ('' when there is no log)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    tail = "\n".join(ANSI.sub("", text).splitlines()[-lines:])
    return tail[-LOG_TAIL_CHARS:]


def _similarity(cmp: dict[str, Any] | None) -> dict[str, Any] | None:
    """Worst cosine / SQNR / top-1 agreement over every compared output (and batch size)."""
    if not cmp:
        return None
    values = list(cmp.values())
    out: dict[str, Any] = {"cos": min(v["cos"] for v in values), "sqnr": min(v["sqnr"] for v in values)}
    top1 = [v["top1"] for v in values if "top1" in v]
    out["top1"] = min(top1) if top1 else None
    out["outputs"] = cmp
    return out


def _int8(metrics: dict[str, Any], tolerance: Any = None) -> dict[str, Any] | None:
    """Worst int8 similarity, the per-layer values (also of a run whose gate failed) and the gate."""
    result = _similarity(metrics.get("cmp"))
    layers = [{k: layer.get(k) for k in ("name", "node", "op", "cos", "sqnr", "max_abs")}
              for layer in metrics.get("layers") or [] if isinstance(layer, dict) and _number(layer.get("cos"))]
    if result is None and not layers:
        return None
    result = result or {"cos": None, "sqnr": None, "top1": None, "outputs": {}}
    result["layers"] = layers
    result["gate"] = {k: v for k, v in tolerance.items() if k in ("cos", "sqnr") and _number(v)} \
        if isinstance(tolerance, dict) else {}
    return result


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# --- writing ------------------------------------------------------------------------------
@dataclass
class Written:
    summary: dict[str, Any]
    paths: dict[str, Path]


def write_report(build_dir: Path, out_dir: Path, names: list[str] | None = None,
                 not_run: Iterable[str] = ()) -> Written:
    """summary.json, junit.xml, summary.md and report.html of the named models into `out_dir`."""
    files = report_files(build_dir, names)
    if not files:
        raise BmbuildError(f"no report.json below {build_dir}: run `bmbuild run` first")
    summary = collect(files, not_run)
    texts = {
        "summary": json.dumps(summary, indent=1, sort_keys=True).encode() + b"\n",
        "junit": junit_xml(summary),
        "markdown": markdown(summary).encode(),
        "html": html_page(summary).encode(),
    }
    paths = {}
    for kind, data in texts.items():
        paths[kind] = out_dir / FILES[kind]
        atomic_write_bytes(paths[kind], data)
    return Written(summary, paths)


# --- formatting helpers -------------------------------------------------------------------
def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s"


def fmt_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_num(value: float | None, digits: int, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _accuracy(model: dict[str, Any], key: str) -> float | None:
    return (model.get("accuracy") or {}).get(key)


def _metric(model: dict[str, Any], section: str, key: str) -> float | None:
    return (model.get(section) or {}).get(key)


def first_line(text: str, limit: int = 300) -> str:
    """An error as one line: its lines joined ("tolerance not met: b1/output: cosine ..."), cut at `limit`."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failures(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in model["stages"] if s["outcome"] == "failed"]


def blocked(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in model["stages"] if s["outcome"] == "blocked"]


# --- JUnit --------------------------------------------------------------------------------
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: Any) -> str:
    """Text that XML 1.0 can hold (control characters from tool output removed)."""
    return _XML_INVALID.sub("", str(text))


def junit_xml(summary: dict[str, Any]) -> bytes:
    """testsuites > testsuite (a model) > testcase (a stage); see the module doc for blocked."""
    root = ET.Element("testsuites")
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for model in summary["models"]:
        suite = ET.SubElement(root, "testsuite")
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        props = ET.SubElement(suite, "properties")
        for key in ("recipe", "toolchain", "target", "prec"):
            if model.get(key):
                ET.SubElement(props, "property", name=key, value=_x(model[key]))
        if model["status"] == ModelStatus.NOT_BUILT.value:
            case = ET.SubElement(suite, "testcase", classname=_x(model["name"]), name="build", time="0.000")
            ET.SubElement(case, "skipped", message=_x(model["note"]))
            counts["tests"], counts["skipped"] = 1, 1
        for stage in model["stages"]:
            counts["tests"] += 1
            case = ET.SubElement(suite, "testcase", classname=_x(model["name"]), name=_x(stage["stage"]),
                                 time=f"{stage['seconds']:.3f}")
            if stage["outcome"] == "failed":
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", message=_x(first_line(stage["error"]) or "failed"),
                                        type="StageFailed")
                text = stage["error"]
                if stage["log_tail"]:
                    text += f"\n\nlog tail ({stage['log']}):\n{stage['log_tail']}"
                elif stage["log"]:
                    text += f"\n\nfull log: {stage['log']}"
                failure.text = _x(text)
            elif stage["outcome"] == "blocked":
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=_x(f"blocked: {first_line(stage['error'])}"))
            else:
                out = ET.SubElement(case, "system-out")
                out.text = _x(_stage_line(stage))
        suite.attrib.update({
            "name": _x(model["name"]), "tests": str(counts["tests"]), "failures": str(counts["failures"]),
            "errors": "0", "skipped": str(counts["skipped"]), "time": f"{model['seconds']:.3f}",
        })
        if model.get("generated"):
            suite.set("timestamp", model["generated"].rstrip("Z"))
        if not len(props):
            suite.remove(props)
        totals["tests"] += counts["tests"]
        totals["failures"] += counts["failures"]
        totals["time"] += model["seconds"]
    root.attrib.update({"name": "bmbuild", "tests": str(totals["tests"]), "failures": str(totals["failures"]),
                        "errors": "0", "time": f"{totals['time']:.3f}"})
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _stage_line(stage: dict[str, Any]) -> str:
    text = stage["outcome"]
    if stage["outcome"] == "restored":
        text += f" from cache (saved {fmt_seconds(stage['saved_seconds'])})"
    if stage["reason"]:
        text += f" ({stage['reason']})"
    if stage["summary"]:
        text += f": {stage['summary']}"
    return text


# --- Markdown -----------------------------------------------------------------------------
STATUS_ICON = {"passed": "✅", "failed": "❌", "not built": "⚪"}


def _md_cell(text: Any) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def markdown(summary: dict[str, Any]) -> str:
    """A GitHub-flavoured summary: one row per model, then each failure with its log tail."""
    totals = summary["totals"]
    stages = totals["stages"]
    lines = [
        f"## bmbuild: {totals['passed']} of {totals['models']} model(s) passed",
        "",
        f"{stages['executed']} stage(s) executed, {stages['restored']} restored from cache, "
        f"{stages['up-to-date']} up to date, {stages['failed']} failed, {stages['blocked']} blocked; "
        f"{fmt_seconds(totals['seconds'])} of stage time, {fmt_seconds(totals['saved_seconds'])} saved by the cache.",
        "",
        "| model | status | executed / restored / up-to-date | time | fp32 cos | int8 cos | int8 SQNR "
        "| int8 top-1 agree | accuracy fp32 | accuracy int8 |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in summary["models"]:
        c = m["counts"]
        cells = [
            f"**{_md_cell(m['name'])}**",
            f"{STATUS_ICON.get(m['status'], '')} {m['status']}",
            f"{c['executed']} / {c['restored']} / {c['up-to-date']}",
            fmt_seconds(m["seconds"]),
            fmt_num(_metric(m, "fp32", "cos"), 6),
            fmt_num(_metric(m, "int8", "cos"), 4),
            fmt_num(_metric(m, "int8", "sqnr"), 1, " dB"),
            fmt_pct(_metric(m, "int8", "top1")),
            fmt_pct(_accuracy(m, "fp32")),
            fmt_pct(_accuracy(m, "int8")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    broken = [m for m in summary["models"] if m["status"] != ModelStatus.PASSED.value]
    if broken:
        lines += ["", "### Failures", ""]
    for m in broken:
        if m["status"] == ModelStatus.NOT_BUILT.value:
            lines += [f"- **{_md_cell(m['name'])}**: {_md_cell(m['note'])}", ""]
            continue
        for stage in failures(m):
            title = f"<b>{html.escape(m['name'])} · {html.escape(stage['stage'])}</b>: " \
                    f"{html.escape(first_line(stage['error'], 200))}"
            body = stage["error"]
            if stage["log_tail"]:
                body += f"\n\nlog tail ({stage['log']}):\n{stage['log_tail']}"
            fence = _fence(body)
            lines += ["<details>", f"<summary>{title}</summary>", "", f"{fence}text", body, fence, "",
                      "</details>", ""]
        if blocked(m):
            names = ", ".join(s["stage"] for s in blocked(m))
            lines += [f"{_md_cell(m['name'])}: blocked by the failure above: {_md_cell(names)}", ""]
    return "\n".join(lines).rstrip() + "\n"


# --- HTML ---------------------------------------------------------------------------------
class Markup(str):
    """Text that is already HTML; everything else is escaped when it goes into a tag."""


def esc(value: Any) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


def tag(name: str, *children: Any, **attrs: Any) -> Markup:
    """<name attrs>children</name>; `class_` -> class, `data_x` -> data-x; None/False dropped."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{html.escape(str(value), quote=True)}"')
    return Markup(f"<{' '.join(parts)}>" + "".join(esc(c) for c in children) + f"</{name}>")


CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --soft:#f6f8fa; --accent:#0969da;
  --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; --run:#0969da; --hit:#8250df; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif; color:var(--fg);
  background:#fff; }
main { max-width:1240px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:17px; margin:32px 0 10px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 8px; }
.sub { color:var(--muted); margin:0 0 16px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:14px 0 8px; }
.card { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:120px; background:var(--soft); }
.card b { display:block; font-size:20px; }
.card span { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:6px 8px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
th { background:var(--soft); font-weight:600; font-size:12px; color:var(--muted); white-space:nowrap; }
td.n, th.n { text-align:right; white-space:nowrap; }
tr:hover td { background:#fbfcfd; }
a { color:var(--accent); text-decoration:none; }
a:hover { text-decoration:underline; }
.status { font-weight:600; white-space:nowrap; }
.status.passed { color:var(--ok); } .status.failed { color:var(--bad); } .status.not-built { color:var(--muted); }
.pills { display:flex; gap:3px; }
.pill { display:inline-block; min-width:40px; padding:1px 6px; border-radius:10px; font-size:11px;
  text-align:center; color:#fff; white-space:nowrap; }
.o-executed { background:var(--run); } .o-restored { background:var(--hit); }
.o-up-to-date { background:#8c959f; } .o-failed { background:var(--bad); } .o-blocked { background:#d4a72c; }
.o-none { background:#fff; color:#afb8c1; border:1px dashed #d0d7de; }
.legend { color:var(--muted); font-size:12px; margin:8px 0 0; display:flex; gap:14px; flex-wrap:wrap; }
.swatch { display:inline-block; width:12px; height:12px; border-radius:3px; vertical-align:-2px; margin-right:4px; }
.model { border:1px solid var(--line); border-radius:8px; padding:4px 16px 14px; margin:18px 0; }
.model > h3 { display:flex; gap:10px; align-items:baseline; }
.meta { color:var(--muted); font-size:12px; }
.mono, code { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
td.summary { color:var(--muted); }
td.error { color:var(--bad); white-space:pre-wrap; }
pre { background:#0d1117; color:#e6edf3; padding:10px 12px; border-radius:6px; overflow:auto;
  font-size:12px; line-height:1.4; max-height:420px; }
details { margin:8px 0; } summary { cursor:pointer; font-weight:600; }
.chart { margin-top:10px; } .chart svg { width:100%; height:auto; display:block; }
.chart .bar:hover .v { fill:#0550ae; } .chart .bar:hover .hit { fill:rgba(9,105,218,0.08); }
.worst { color:var(--muted); font-size:12px; margin:4px 0 0; }
footer { color:var(--muted); font-size:12px; margin-top:32px; }
"""


def html_page(summary: dict[str, Any]) -> str:
    """The whole report as one HTML document with no external resources."""
    totals = summary["totals"]
    stages = totals["stages"]
    cards = [
        (f"{totals['passed']}/{totals['models']}", "models passed"),
        (str(totals["failed"]), "models failed"),
        (str(stages["executed"]), "stages executed"),
        (str(stages["restored"]), "restored from cache"),
        (str(stages["up-to-date"]), "up to date"),
        (fmt_seconds(totals["seconds"]), "stage time"),
        (fmt_seconds(totals["saved_seconds"]), "saved by the cache"),
    ]
    body = [
        tag("h1", "bmbuild report"),
        tag("p", f"{totals['models']} model(s) · generated {summary['generated']} · bmbuild {summary['bmbuild']}",
            class_="sub"),
        tag("div", *(tag("div", tag("b", value), tag("span", label), class_="card") for value, label in cards),
            class_="cards"),
        tag("h2", "Models"),
        models_table(summary["models"]),
        legend(),
        tag("h2", "Details"),
        *(model_section(i, m) for i, m in enumerate(summary["models"])),
        tag("footer", "Made by bmbuild from build/<recipe>/report.json. Per-layer plots: cosine "
                      "similarity of each int8 tensor with its fp32 twin, in graph order; hover a bar "
                      "for the layer."),
    ]
    return ("<!DOCTYPE html>\n" + tag(
        "html",
        tag("head", Markup('<meta charset="utf-8">'),
            Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            tag("title", f"bmbuild report: {totals['passed']}/{totals['models']} passed"),
            tag("style", Markup(CSS))),
        tag("body", tag("main", *body)),
        lang="en") + "\n")


def _anchor(index: int, name: str) -> str:
    return f"m{index}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def stage_pills(model: dict[str, Any]) -> Markup:
    present = {s["stage"]: s for s in model["stages"]}
    expected = [s for s in STAGE_MODULES if model.get("prec") != "FP32" or s not in INT8_STAGES]
    pills = []
    for name in stage_order(set(expected) | set(present)):
        stage = present.get(name)
        label = STAGE_LABELS.get(name, name)
        if stage is None:
            pills.append(tag("span", label, class_="pill o-none", title=f"{name}: not in this run"))
            continue
        tip = f"{name}: {stage['outcome']}"
        if stage["outcome"] in OK_OUTCOMES:
            tip += f" in {fmt_seconds(stage['seconds'])}"
        if stage["reason"]:
            tip += f" ({stage['reason']})"
        if stage["error"]:
            tip += f"\n{first_line(stage['error'])}"
        pills.append(tag("span", label, class_=f"pill o-{stage['outcome']}", title=tip))
    return tag("div", *pills, class_="pills")


def _cache_cell(model: dict[str, Any]) -> str:
    c = model["counts"]
    ran = c["executed"] + c["restored"] + c["up-to-date"]
    if not ran:
        return "–"
    return f"{c['restored'] + c['up-to-date']}/{ran} hit"


def models_table(models: list[dict[str, Any]]) -> Markup:
    heads = [("model", ""), ("status", ""), ("stages", ""), ("time", "n"), ("saved", "n"), ("cache", "n"),
             ("outputs", "n"), ("fp32 cos", "n"), ("int8 cos", "n"), ("int8 SQNR", "n"),
             ("top-1 agree", "n"), ("acc fp32", "n"), ("acc int8", "n")]
    rows = []
    for i, m in enumerate(models):
        status_class = m["status"].replace(" ", "-")
        cells = [
            tag("td", tag("a", m["name"], href=f"#{_anchor(i, m['name'])}"),
                tag("div", " · ".join(str(x) for x in (m.get("toolchain"), m.get("target"), m.get("prec")) if x),
                    class_="meta")),
            tag("td", m["status"], class_=f"status {status_class}", title=m.get("note") or None),
            tag("td", stage_pills(m)),
            tag("td", fmt_seconds(m["seconds"]) if m["stages"] else "–", class_="n"),
            tag("td", fmt_seconds(m["saved_seconds"]) if m["saved_seconds"] else "–", class_="n"),
            tag("td", _cache_cell(m), class_="n",
                title=f"{m['counts']['restored']} restored from cache, {m['counts']['up-to-date']} up to date"),
            tag("td", fmt_bytes(m["output_bytes"]) if m["output_bytes"] else "–", class_="n"),
            tag("td", fmt_num(_metric(m, "fp32", "cos"), 6), class_="n"),
            tag("td", fmt_num(_metric(m, "int8", "cos"), 4), class_="n"),
            tag("td", fmt_num(_metric(m, "int8", "sqnr"), 1, " dB"), class_="n"),
            tag("td", fmt_pct(_metric(m, "int8", "top1")), class_="n"),
            tag("td", fmt_pct(_accuracy(m, "fp32")), class_="n"),
            tag("td", fmt_pct(_accuracy(m, "int8")), class_="n"),
        ]
        rows.append(tag("tr", *cells))
    head = tag("thead", tag("tr", *(tag("th", h, class_=c or None) for h, c in heads)))
    return tag("table", head, tag("tbody", *rows), id="models", class_="models")


def legend() -> Markup:
    items = [("executed", "executed"), ("restored", "restored from cache"), ("up-to-date", "up to date"),
             ("failed", "failed"), ("blocked", "blocked by a failure"), ("none", "not in this run")]
    return tag("div", *(tag("span", tag("span", "", class_=f"swatch o-{o}"), text) for o, text in items),
               class_="legend")


def model_section(index: int, model: dict[str, Any]) -> Markup:
    status_class = model["status"].replace(" ", "-")
    meta = [f"{k}: {model[k]}" for k in ("recipe", "toolchain", "target", "prec") if model.get(k)]
    if model.get("batch_sizes"):
        meta.append("batch sizes: " + ", ".join(str(b) for b in model["batch_sizes"]))
    parts: list[Any] = [
        tag("h3", model["name"], tag("span", model["status"], class_=f"status {status_class}")),
        tag("div", " · ".join(meta), class_="meta"),
    ]
    if model["status"] == ModelStatus.NOT_BUILT.value:
        parts.append(tag("p", model["note"]))
        return tag("section", *parts, class_="model", id=_anchor(index, model["name"]))
    parts.append(stage_table(model))
    accuracy = model.get("accuracy")
    if accuracy:
        parts.append(tag("p", f"accuracy ({accuracy.get('metric', '')}, {accuracy.get('samples', '?')} samples): "
                              f"fp32 {fmt_pct(accuracy.get('fp32'))}, int8 {fmt_pct(accuracy.get('int8'))}, "
                              f"drop {fmt_num(accuracy.get('drop_points'), 2)} points", class_="meta"))
    layers = (model.get("int8") or {}).get("layers") or []
    gate = (model.get("int8") or {}).get("gate") or {}
    if layers:
        parts.append(tag("div", tag("h3", "int8 vs fp32, per layer (cosine bars, SQNR dots)"),
                         layer_chart(model["name"], layers, gate=gate), worst_layers(layers, gate), class_="chart"))
    elif model.get("prec") == "INT8":
        parts.append(tag("p", "no per-layer int8 data (compile_int8 did not finish or int8.cmp is off)",
                         class_="meta"))
    for stage in failures(model):
        parts.append(tag("details", tag("summary", f"{stage['stage']} failed: {first_line(stage['error'])}"),
                         tag("pre", stage["error"] + (f"\n\nlog tail ({stage['log']}):\n{stage['log_tail']}"
                                                      if stage["log_tail"] else "")),
                         open=True))
    return tag("section", *parts, class_="model", id=_anchor(index, model["name"]))


def stage_table(model: dict[str, Any]) -> Markup:
    heads = [("stage", ""), ("outcome", ""), ("time", "n"), ("saved", "n"), ("outputs", "n"), ("key", ""),
             ("result", "")]
    rows = []
    for s in model["stages"]:
        result = tag("td", first_line(s["error"]) if s["outcome"] in ("failed", "blocked") else s["summary"],
                     class_="error" if s["outcome"] in ("failed", "blocked") else "summary")
        sizes = "\n".join(f"{rel}: {fmt_bytes(size)}" for rel, size in sorted(s["outputs"].items()))
        rows.append(tag(
            "tr",
            tag("td", s["stage"]),
            tag("td", tag("span", s["outcome"], class_=f"pill o-{s['outcome']}"),
                title=s["reason"] or None),
            tag("td", fmt_seconds(s["seconds"]) if s["outcome"] in OK_OUTCOMES else "–", class_="n"),
            tag("td", fmt_seconds(s["saved_seconds"]) if s["saved_seconds"] else "–", class_="n"),
            tag("td", fmt_bytes(s["output_bytes"]) if s["outputs"] else "–", class_="n", title=sizes or None),
            tag("td", s["key"][:12] or "–", class_="mono", title=s["key"] or None),
            result,
        ))
    head = tag("thead", tag("tr", *(tag("th", h, class_=c or None) for h, c in heads)))
    return tag("table", head, tag("tbody", *rows), class_="stages")


def lowest_layers(layers: list[dict[str, Any]]) -> list[int]:
    """Indices of the layers to point out: the lowest tenth, 1 to 5 of them (the gate lists 5)."""
    count = max(1, min(5, len(layers) // 10))
    return sorted(range(len(layers)), key=lambda i: layers[i]["cos"])[:count]


def below_gate(layers: list[dict[str, Any]], gate: dict[str, float] | None) -> list[int]:
    """Indices of the layers to colour red: those below the int8 gate's cosine or SQNR (none when
    every layer passes); without a gate (an older report.json), the lowest few."""
    if not gate:
        return lowest_layers(layers)
    return [i for i, layer in enumerate(layers)
            if ("cos" in gate and layer["cos"] < gate["cos"])
            or ("sqnr" in gate and _number(layer.get("sqnr")) and layer["sqnr"] < gate["sqnr"])]


def _gate_text(gate: dict[str, float]) -> str:
    return " and ".join(f"{k} ≥ {v:g}{' dB' if k == 'sqnr' else ''}" for k, v in gate.items())


def worst_layers(layers: list[dict[str, Any]], gate: dict[str, float] | None = None) -> Markup:
    def item(i: int) -> str:
        layer = layers[i]
        return (f"#{i} {layer['name']} ({layer.get('op') or '?'}) cos {layer['cos']:.4f}, "
                f"SQNR {fmt_num(layer.get('sqnr'), 1, ' dB')}")

    red = below_gate(layers, gate)
    if not gate:
        return tag("p", f"{len(layers)} layers; lowest (red): " + "; ".join(map(item, red)), class_="worst")
    if not red:
        return tag("p", f"{len(layers)} layers, all within the gate ({_gate_text(gate)}); lowest: "
                   + "; ".join(map(item, lowest_layers(layers))), class_="worst")
    return tag("p", f"{len(layers)} layers; {len(red)} below the gate ({_gate_text(gate)}, red; candidates for "
               "int8.fp32_layers): " + "; ".join(map(item, sorted(red, key=lambda i: layers[i]["cos"])[:8])),
               class_="worst")


# --- SVG ----------------------------------------------------------------------------------
Y_FLOORS = (0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.5, 0.0, -1.0)


def y_floor(lowest: float) -> float:
    """A round lower bound of the y axis, a little below the lowest value."""
    for floor in Y_FLOORS:
        if floor <= lowest - 0.1 * (1 - lowest) - 1e-9:
            return floor
    return -1.0


def svg_text(x: float, y: float, text: str, anchor: str = "middle", **attrs: Any) -> Markup:
    return tag("text", text, x=f"{x:.1f}", y=f"{y:.1f}", text_anchor=anchor, **attrs)


def svg_line(x1: float, y1: float, x2: float, y2: float, stroke: str, **attrs: Any) -> Markup:
    return tag("line", x1=f"{x1:.1f}", y1=f"{y1:.1f}", x2=f"{x2:.1f}", y2=f"{y2:.1f}", stroke=stroke, **attrs)


def svg_rect(x: float, y: float, w: float, h: float, fill: str, **attrs: Any) -> Markup:
    return tag("rect", x=f"{x:.2f}", y=f"{y:.2f}", width=f"{max(w, 0.5):.2f}", height=f"{max(h, 0):.2f}",
               fill=fill, **attrs)


def layer_chart(model: str, layers: list[dict[str, Any]], width: int = 1160, height: int = 240,
                gate: dict[str, float] | None = None) -> Markup:
    """Bars of per-layer cosine in graph order (the axis reaches down to the gate, drawn dashed;
    red: below the gate), per-layer SQNR as dots on the right axis; each bar's <title> names its layer."""
    left, right, top, bottom = 60, 52, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [float(layer["cos"]) for layer in layers]
    gate = gate or {}
    lo, hi = y_floor(min(values + ([gate["cos"]] if "cos" in gate else []))), 1.0

    def y_of(value: float) -> float:
        return top + plot_h * (hi - min(max(value, lo), hi)) / (hi - lo)

    parts: list[Markup] = []
    for k in range(6):
        value = lo + (hi - lo) * k / 5
        y = y_of(value)
        parts.append(svg_line(left, y, left + plot_w, y, "#eaeef2"))
        parts.append(svg_text(left - 6, y + 4, f"{value:.4g}", anchor="end", class_="tick"))
    step = plot_w / len(layers)
    bar = min(step - min(2.0, step * 0.2), 36.0)
    worst = set(below_gate(layers, gate))
    for i, (layer, value) in enumerate(zip(layers, values)):
        x = left + i * step
        tip = (f"#{i} {layer['name']}\nop {layer.get('op') or '?'}, node {layer.get('node') or '?'}\n"
               f"cos {value:.6f} · SQNR {fmt_num(layer.get('sqnr'), 1, ' dB')}")
        parts.append(tag("g", tag("title", tip),
                         svg_rect(x, top, step, plot_h, "transparent", class_="hit"),
                         svg_rect(x + (step - bar) / 2, y_of(value), bar, top + plot_h - y_of(value),
                                  "#cf222e" if i in worst else "#54aeff", class_="v"),
                         class_="bar"))
    if "cos" in gate:
        y = y_of(gate["cos"])
        parts.append(svg_line(left, y, left + plot_w, y, "#cf222e", stroke_dasharray="6 4", class_="gate"))
        parts.append(svg_text(left + plot_w - 4, y - 4, f"gate cos {gate['cos']:g}", anchor="end", class_="gate-label"))
    parts += sqnr_series(layers, step, left, top, plot_w, plot_h, gate.get("sqnr"))
    tick_every = max(1, -(-len(layers) // 12))
    for i in range(0, len(layers), tick_every):
        x = left + (i + 0.5) * step
        parts.append(svg_line(x, top + plot_h, x, top + plot_h + 4, "#8c959f"))
        parts.append(svg_text(x, top + plot_h + 16, str(i), class_="tick"))
    parts.append(svg_line(left, top + plot_h, left + plot_w, top + plot_h, "#8c959f"))
    parts.append(svg_line(left, top, left, top + plot_h, "#8c959f"))
    parts.append(svg_text(left + plot_w / 2, height - 4, "layer (graph order)", class_="axis"))
    parts.append(svg_text(14, top + plot_h / 2, "cosine", class_="axis",
                          transform=f"rotate(-90 14 {top + plot_h / 2:.1f})"))
    style = tag("style", Markup(".tick{font:11px sans-serif;fill:#656d76}.axis{font:12px sans-serif;fill:#1f2328}"
                                ".gate-label{font:11px sans-serif;fill:#cf222e}"))
    return tag("svg", style, *parts, xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}",
               role="img", aria_label=f"per-layer int8 cosine similarity and SQNR of {model}", class_="layers",
               data_model=model)


def sqnr_axis(values: list[float], gate: float | None) -> tuple[float, float]:
    """The right axis in dB: from 0 (or below, for negative SQNR) to a round 10 above the highest."""
    top = max(values + ([gate] if gate is not None else []))
    return min(0.0, 10 * math.floor(min(values) / 10)), max(10.0, 10 * math.ceil(top / 10))


def sqnr_series(layers: list[dict[str, Any]], step: float, left: float, top: float, plot_w: float,
                plot_h: float, gate: float | None) -> list[Markup]:
    """Per-layer SQNR: dots joined by a line, the right axis in dB, the SQNR gate dashed."""
    points = [(i, float(layer["sqnr"])) for i, layer in enumerate(layers) if _number(layer.get("sqnr"))]
    if not points:
        return []
    lo, hi = sqnr_axis([v for _, v in points], gate)

    def y_of(value: float) -> float:
        return top + plot_h * (hi - min(max(value, lo), hi)) / (hi - lo)

    right = left + plot_w
    parts = [svg_line(right, top, right, top + plot_h, "#8c959f")]
    for k in range(6):
        value = lo + (hi - lo) * k / 5
        parts.append(svg_text(right + 6, y_of(value) + 4, f"{value:.0f}", anchor="start", class_="tick"))
    parts.append(svg_text(right + 40, top + plot_h / 2, "SQNR (dB)", class_="axis",
                          transform=f"rotate(90 {right + 40:.1f} {top + plot_h / 2:.1f})"))
    xy = [(left + (i + 0.5) * step, y_of(v)) for i, v in points]
    parts.append(tag("polyline", points=" ".join(f"{x:.1f},{y:.1f}" for x, y in xy), fill="none",
                     stroke="#8250df", stroke_width="1", opacity="0.6", pointer_events="none"))
    parts += [tag("circle", cx=f"{x:.1f}", cy=f"{y:.1f}", r="2.5", pointer_events="none", class_="sqnr",
                  fill="#8250df" if gate is None or v >= gate else "#cf222e")  # the bar's title tells
              for (i, v), (x, y) in zip(points, xy)]
    if gate is not None:
        parts.append(svg_line(left, y_of(gate), right, y_of(gate), "#8250df", stroke_dasharray="2 3", class_="gate"))
    return parts
