"""Collecting: the per-recipe `build/<recipe>/report.json` files of a run turned into one summary
(plain data), which every report format renders."""

from __future__ import annotations

import json
import re
import time
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

from bmbuild import __version__
from bmbuild.errors import BmbuildError
from bmbuild.pipeline import PIPELINE_ORDER, Outcome, StageName

SUMMARY_FORMAT = 1
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 8000
# The outcomes as report.json files and the summary spell them: their Outcome values.
EXECUTED, RESTORED, UP_TO_DATE, FAILED, BLOCKED = (outcome.value for outcome in (
    Outcome.EXECUTED, Outcome.RESTORED, Outcome.UP_TO_DATE, Outcome.FAILED, Outcome.BLOCKED))
OK_OUTCOMES = (EXECUTED, RESTORED, UP_TO_DATE)
OUTCOMES = (*OK_OUTCOMES, FAILED, BLOCKED)


class ModelStatus(Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_BUILT = "not built"


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
    known = [s for s in PIPELINE_ORDER if s in names]
    return known + sorted(set(names) - set(known))


def model_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One model's entry of the summary, from its report.json."""
    raw = report.get("stages", {})
    stages = [stage_summary(name, raw[name]) for name in stage_order(raw)]
    counts = {o: sum(1 for s in stages if s["outcome"] == o) for o in OUTCOMES}
    failed = counts[FAILED] + counts[BLOCKED] > 0 or not report.get("ok", True)
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
        "fp32": _similarity(metrics.get(StageName.COMPILE_FP32, {}).get("cmp")),
        "int8": _int8(metrics.get(StageName.COMPILE_INT8, {}), report.get("int8_tolerance")),
        "accuracy": metrics.get(StageName.COMPILE_INT8, {}).get("eval") or None,
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
        "cache_hit": outcome == Outcome.RESTORED.value,
        "outputs": outputs,
        "output_bytes": sum(outputs.values()),
        "key": record.get("key", ""),
        "summary": record.get("summary", ""),
        "error": record.get("error", ""),
        "log": record.get("log", ""),
        "log_tail": "",
    }
    if outcome == FAILED and entry["log"]:
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
              for layer in metrics.get("layers") or [] if isinstance(layer, dict) and is_number(layer.get("cos"))]
    if result is None and not layers:
        return None
    result = result or {"cos": None, "sqnr": None, "top1": None, "outputs": {}}
    result["layers"] = layers
    result["gate"] = {k: v for k, v in tolerance.items() if k in ("cos", "sqnr") and is_number(v)} \
        if isinstance(tolerance, dict) else {}
    return result


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
