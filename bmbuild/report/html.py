"""report.html: one self-contained page, tables and the per-layer plots (bmbuild.report.svg)."""

from __future__ import annotations

import re
from typing import Any

from bmbuild.diff import METRICS, fmt_value
from bmbuild.pipeline import INT8_STAGES, PIPELINE_ORDER, StageName
from bmbuild.report.collect import (BLOCKED, EXECUTED, FAILED, OK_OUTCOMES, RESTORED, UP_TO_DATE, ModelStatus,
                                    stage_order)
from bmbuild.report.formatting import (_accuracy, _metric, failures, first_line, fmt_bytes, fmt_num, fmt_pct,
                                       fmt_seconds)
from bmbuild.report.markup import Markup, tag
from bmbuild.report.svg import below_gate, layer_chart, lowest_layers


STAGE_LABELS = {StageName.TRACE: "trace", StageName.COMPILE_FP32: "fp32", StageName.CALIBRATE: "calib",
                StageName.QUANTIZE: "quant", StageName.COMPILE_INT8: "int8"}


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
table.baseline { width:auto; min-width:520px; margin-top:10px; }
td.better { color:var(--ok); } td.worse { color:var(--bad); }
"""


def html_page(summary: dict[str, Any]) -> str:
    """The whole report as one HTML document with no external resources."""
    totals = summary["totals"]
    stages = totals["stages"]
    baseline = summary.get("baseline") or {"source": "", "models": {}}
    cards = [
        (f"{totals['passed']}/{totals['models']}", "models passed"),
        (str(totals[ModelStatus.FAILED.value]), "models failed"),
        (str(stages[EXECUTED]), "stages executed"),
        (str(stages[RESTORED]), "restored from cache"),
        (str(stages[UP_TO_DATE]), "up to date"),
        (fmt_seconds(totals["seconds"]), "stage time"),
        (fmt_seconds(totals["saved_seconds"]), "saved by the cache"),
    ]
    body = [
        tag("h1", "bmbuild report"),
        tag("p", f"{totals['models']} model(s) · generated {summary['generated']} · bmbuild {summary['bmbuild']}"
            + (f" · baseline: {baseline['source']}" if baseline["source"] else ""), class_="sub"),
        tag("div", *(tag("div", tag("b", value), tag("span", label), class_="card") for value, label in cards),
            class_="cards"),
        tag("h2", "Models"),
        models_table(summary["models"]),
        legend(),
        tag("h2", "Details"),
        *(model_section(i, m, baseline["models"].get(m["name"]) if baseline["source"] else None)
          for i, m in enumerate(summary["models"])),
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
    expected = [s for s in PIPELINE_ORDER if model.get("prec") != "FP32" or s not in INT8_STAGES]
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
    ran = c[EXECUTED] + c[RESTORED] + c[UP_TO_DATE]
    if not ran:
        return "–"
    return f"{c[RESTORED] + c[UP_TO_DATE]}/{ran} hit"


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
                title=f"{m['counts'][RESTORED]} restored from cache, {m['counts'][UP_TO_DATE]} up to date"),
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
    items = [(EXECUTED, "executed"), (RESTORED, "restored from cache"), (UP_TO_DATE, "up to date"),
             (FAILED, "failed"), (BLOCKED, "blocked by a failure"), ("none", "not in this run")]
    return tag("div", *(tag("span", tag("span", "", class_=f"swatch o-{o}"), text) for o, text in items),
               class_="legend")


def model_section(index: int, model: dict[str, Any], baseline: dict[str, Any] | None = None) -> Markup:
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
    if baseline is not None:
        parts.append(baseline_table(model["name"], baseline))
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


HIGHER_IS_BETTER = ("fp32.", "int8.", "accuracy.")  # similarity and accuracy; sizes are neither


def _baseline_value(key: str, value: Any, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    if key.startswith("size."):
        return f"{value:+,.0f} B" if signed else fmt_bytes(int(value))
    return f"{value:+,.{digits}f}" if signed else fmt_value(value, digits)


def baseline_table(name: str, row: dict[str, Any]) -> Markup:
    """This model next to the baseline: each metric (baseline, current, change) and each changed parameter."""
    status = row["status"]
    if status["old"] is None:
        return tag("p", "not in the baseline", class_="meta baseline-absent")
    rows = []
    if status["old"] != status["new"]:
        rows.append(tag("tr", tag("td", "status"), tag("td", status["old"]), tag("td", status["new"] or "–"),
                        tag("td", "")))
    for key, label, digits in METRICS:
        values = row["metrics"].get(key)
        if values is None:
            continue
        change = values["change"]
        trend = None
        if change and key.startswith(HIGHER_IS_BETTER):
            trend = "n better" if change > 0 else "n worse"
        rows.append(tag("tr", tag("td", label), tag("td", _baseline_value(key, values["old"], digits), class_="n"),
                        tag("td", _baseline_value(key, values["new"], digits), class_="n"),
                        tag("td", _baseline_value(key, change, digits, signed=True), class_=trend or "n"),
                        data_metric=key))
    for key, values in row["params"].items():
        rows.append(tag("tr", tag("td", f"param {key}"), tag("td", fmt_value(values["old"], 6), class_="n mono"),
                        tag("td", fmt_value(values["new"], 6), class_="n mono"), tag("td", "changed"),
                        data_param=key))
    head = tag("thead", tag("tr", *(tag("th", h, class_=c) for h, c in (
        ("vs baseline", None), ("baseline", "n"), ("current", "n"), ("change", "n")))))
    return tag("table", head, tag("tbody", *rows), class_="baseline", data_model=name)


def stage_table(model: dict[str, Any]) -> Markup:
    heads = [("stage", ""), ("outcome", ""), ("time", "n"), ("saved", "n"), ("outputs", "n"), ("key", ""),
             ("result", "")]
    rows = []
    for s in model["stages"]:
        result = tag("td", first_line(s["error"]) if s["outcome"] in (FAILED, BLOCKED) else s["summary"],
                     class_="error" if s["outcome"] in (FAILED, BLOCKED) else "summary")
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


def render(summary: dict[str, Any]) -> bytes:
    return html_page(summary).encode()
