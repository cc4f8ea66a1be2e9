"""The tpu-mlir calibration table text format, written reproducibly.

    # bmbuild calibration table
    # method: kl
    # op_name    threshold    min    max
    input 2.6368656 -2.1148427 2.6355782

Floats are written as `repr(float(x))`: the shortest text that reads back to the same float64,
so read -> write is lossless and the bytes depend only on the values. No timestamp is written
and rows keep the caller's order, so identical inputs give identical bytes (content caching).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from bmbuild.atomic import atomic_write_bytes
from bmbuild.errors import DataError

TITLE = "# bmbuild calibration table"
COLUMNS = "# op_name    threshold    min    max"
Row = tuple[float, float, float]
_LATER_SECTIONS = ("#int4_th", "#weight_scale", "#asym_op")
UNCLIPPED = 1.01  # an output cut by less than this factor is left as it is (tpu-mlir writes a symmetric
                  # tensor's min as -threshold*128/127: not a clip)


def _fmt(x: float) -> str:
    return repr(float(x))


def format_table(rows: Mapping[str, Row], header: Mapping[str, str] | None = None) -> str:
    """The table text; ValueError on names with whitespace or non-finite numbers."""
    lines = [TITLE]
    for key, value in (header or {}).items():
        text = f"{key}: {value}"
        if "\n" in text or "\r" in text:
            raise ValueError(f"header entry {key!r} must be on one line")
        lines.append(f"# {text}")
    lines.append(COLUMNS)
    for name, row in rows.items():
        if not name or name.startswith("#") or any(ch.isspace() for ch in name):
            raise ValueError(f"tensor name {name!r} cannot be written in a calibration table "
                             "(empty, starting with '#', or containing whitespace)")
        if len(row) != 3 or not all(math.isfinite(float(v)) for v in row):
            raise ValueError(f"tensor {name!r}: expected finite (threshold, min, max), got {row}")
        lines.append(" ".join([name, *map(_fmt, row)]))
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, rows: Mapping[str, Row],
                header: Mapping[str, str] | None = None) -> None:
    """Write atomically (temp file in the same folder, then os.replace), with the permissions
    of any file the user creates (mkstemp's 0600 made the table unreadable to others)."""
    path = Path(path)
    data = format_table(rows, header).encode("utf-8")
    atomic_write_bytes(path, data, mode=0o666 & ~_umask())


def _unclipped(row: Row) -> float | None:
    """The |x| max a row's threshold cuts by more than UNCLIPPED, else None."""
    threshold, low, high = row
    absmax = max(abs(low), abs(high))
    return absmax if math.isfinite(absmax) and absmax > threshold * UNCLIPPED else None


def outputs_unclipped(rows: Mapping[str, Row], outputs: list[str]) -> tuple[dict[str, Row], list[str]]:
    """The rows with every graph output's threshold at its |x| max, and the outputs raised.

    A clipped output reaches the user clipped: no later layer absorbs the error, and tpu-mlir's
    threshold tuning never revisits it (SimpleTuner scores a tensor through the layers that read
    it; an output has none), so kl's cut of a detector's box coordinates stayed (nudenet's cos
    0.87 where onnxruntime's min-max gave 0.999).
    """
    result = dict(rows)
    raised = []
    for name in outputs:
        absmax = _unclipped(result[name]) if name in result else None
        if absmax is not None:
            result[name] = (absmax, *result[name][1:])
            raised.append(name)
    return result, raised


def unclip_outputs_in_text(text: str, outputs: list[str]) -> tuple[str, list[str]]:
    """`outputs_unclipped` on a table's text (tpu-mlir's own too), every other line kept as it is."""
    wanted = set(outputs)
    lines = text.splitlines(keepends=True)
    raised = []
    for index, line in enumerate(lines):
        fields = line.split()
        if line.strip().startswith(_LATER_SECTIONS):
            break
        if len(fields) != 4 or fields[0] not in wanted:
            continue
        try:
            absmax = _unclipped((float(fields[1]), float(fields[2]), float(fields[3])))
        except ValueError:
            continue
        if absmax is not None:
            ending = line[len(line.rstrip("\r\n")):]
            lines[index] = " ".join([fields[0], _fmt(absmax), fields[2], fields[3]]) + ending
            raised.append(fields[0])
    return "".join(lines), raised


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (other threads may be
    creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_table(path: str | Path) -> dict[str, Row]:
    """{name: (threshold, min, max)} in file order; `#` and blank lines are skipped.

    Accepts tables written by tpu-mlir too: extra `#` headers are skipped and reading stops at its
    later `#int4_th` / `#weight_scale` / `#asym_op` sections. DataError with file:line on a malformed line or
    a repeated name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read calibration table: {exc}", file=path) from exc
    rows: dict[str, Row] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(_LATER_SECTIONS):
            break
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        where = f"line {lineno}: "
        if len(fields) != 4:
            raise DataError(f"{where}expected 'name threshold min max', found {len(fields)} "
                            f"fields: {stripped!r}", file=path)
        name = fields[0]
        try:
            values = tuple(float(v) for v in fields[1:])
        except ValueError:
            raise DataError(f"{where}threshold, min and max must be numbers: {stripped!r}",
                            file=path) from None
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{where}non-finite number: {stripped!r}", file=path)
        if values[0] <= 0:
            raise DataError(f"{where}threshold must be positive: {stripped!r}", file=path)
        if name in rows:
            raise DataError(f"{where}tensor {name!r} appears twice", file=path)
        rows[name] = values  # type: ignore[assignment]
    return rows
