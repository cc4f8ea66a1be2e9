"""summary.md: a table and the failures' log tails, for $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import html
import re
from typing import Any

from bmbuild.report.collect import BLOCKED, EXECUTED, FAILED, RESTORED, UP_TO_DATE, ModelStatus
from bmbuild.report.formatting import _accuracy, _metric, blocked, failures, first_line, fmt_num, fmt_pct, fmt_seconds


STATUS_ICON = {ModelStatus.PASSED.value: "✅", ModelStatus.FAILED.value: "❌", ModelStatus.NOT_BUILT.value: "⚪"}


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
        f"{stages[EXECUTED]} stage(s) executed, {stages[RESTORED]} restored from cache, "
        f"{stages[UP_TO_DATE]} up to date, {stages[FAILED]} failed, {stages[BLOCKED]} blocked; "
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
            f"{c[EXECUTED]} / {c[RESTORED]} / {c[UP_TO_DATE]}",
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


def render(summary: dict[str, Any]) -> bytes:
    return markdown(summary).encode()
