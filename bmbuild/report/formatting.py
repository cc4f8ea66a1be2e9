"""Numbers and texts as every report format shows them."""

from __future__ import annotations

from typing import Any

from bmbuild.report.collect import BLOCKED, FAILED


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
    return [s for s in model["stages"] if s["outcome"] == FAILED]


def blocked(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in model["stages"] if s["outcome"] == BLOCKED]
