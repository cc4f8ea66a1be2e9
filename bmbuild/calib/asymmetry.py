"""`int8.asymmetric: auto`: calibrate's choice between symmetric and asymmetric int8, as a file.

On a chip with asymmetric int8 (BM1684X) calibrate builds the model both ways in the reference
simulation and keeps the mode whose int8 is closer to fp32 on the calibration samples
(`bmbuild.toolchains.reference_int8.choose_asymmetry`); quantize and compile_int8 build that
mode. The choice travels between stages as `<name>_int8_mode.json` in calibrate's output (and
quantize's, for compile_int8). It is read back from a cache, so it is checked like any input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bmbuild.errors import StageFailed

AUTO = "auto"
CHOICE_SAMPLES = 32  # calibration samples each mode is scored on
# asymmetric int8 is kept only when it gains more mean cos than this: below it the two are a tie
# that calibration-sample noise decides (a head model gained 1e-6 there and lost as much on held-out
# samples), and the symmetric mode is the faster one on the chip
MIN_GAIN = 1e-4


def choice_name(net_name: str) -> str:
    return f"{net_name}_int8_mode.json"


def write_choice(path: Path, asymmetric: bool, reason: str, cos: dict[str, float] | None = None,
                 samples: int = 0) -> None:
    data: dict[str, Any] = {"asymmetric": asymmetric, "reason": reason}
    if cos is not None:
        data.update({"cos": cos, "samples": samples})
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_choice(path: Path) -> bool:
    """The mode a choice file holds; a missing or malformed file fails the stage, naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StageFailed(f"cannot read calibrate's int8 mode choice {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("asymmetric"), bool):
        raise StageFailed(f"{path} is not an int8 mode choice (expected {{\"asymmetric\": true|false, ...}})")
    return data["asymmetric"]


def asymmetric_mode(params: dict[str, Any], folder: Path, net_name: str, strict: bool = False) -> bool:
    """Whether to build asymmetric int8: the recipe's true/false, or for auto the choice calibrate
    wrote in `folder`. No file there yet (a dry run before calibrate ran): symmetric, what auto
    starts from, unless `strict` (a step that runs now: the missing file fails it); a real tpu-mlir
    run copies the file first (`copy_file` fails when it is missing)."""
    value = params.get("asymmetric")
    if value != AUTO:
        return bool(value)
    path = folder / choice_name(net_name)
    return read_choice(path) if strict or path.exists() else False
