"""Hand-made inline SVG: the per-layer int8 cosine bars of report.html."""

from __future__ import annotations

import math
from typing import Any

from bmbuild.report.collect import is_number
from bmbuild.report.formatting import fmt_num
from bmbuild.report.markup import Markup, tag


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
            or ("sqnr" in gate and is_number(layer.get("sqnr")) and layer["sqnr"] < gate["sqnr"])]


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
    points = [(i, float(layer["sqnr"])) for i, layer in enumerate(layers) if is_number(layer.get("sqnr"))]
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
