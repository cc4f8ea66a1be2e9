"""`tpu_model --info <bmodel>` text -> plain data for report.json.

The layout (sophgo-toolchains.md, section 5):

    bmodel version: B.2.2
    chip: BM1684
    create time: Sat Nov 21 07:29:15 2026

    ==========================================
    net 0: [resnet]  static
    ------------
    stage 0:
    input: input.1, [1, 3, 224, 224], float32, scale: 1
    output: output.1, [1, 1000], float32, scale: 1

    device mem size: 1234 (coeff: 1000, instruct: 34, runtime: 200)
    host mem size: 0 (coeff: 0, runtime: 0)

Lines the parser does not know are skipped, and extra `key: value` fields after a tensor's scale
(newer SDKs print `zero_point: 0`) are kept, so a slightly different tpu_model still parses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from bmbuild.commands import Command
    from bmbuild.stagecontext import StageContext
    from bmbuild.steps import Step

_NET = re.compile(r"net\s+(\d+):\s*\[(?P<name>.*)\]\s*(?P<kind>static|dynamic)\b", re.IGNORECASE)
_STAGE = re.compile(r"stage\s+(\d+)\s*(?::|,[^:]*:\s*\d+)?\s*$", re.IGNORECASE)  # tpu-mlir: "stage 0, core num: 1"
_TENSOR = re.compile(r"(?P<io>input|output):\s*(?P<name>.*?),\s*\[(?P<shape>[-\d,\s]*)\],\s*(?P<dtype>[A-Za-z0-9_]+)"
                     r"(?P<rest>.*)$")
_MEM = re.compile(r"(?P<which>device|host) mem size:\s*(?P<total>\d+)\s*(?:\((?P<parts>[^)]*)\))?", re.IGNORECASE)
_FIELD = re.compile(r"([A-Za-z_ ]+?):\s*([^,]+)")


class BmodelInfoError(ValueError):
    """The text is not `tpu_model --info` output."""


def _number(text: str) -> int | float | str:
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _tensor(match: re.Match[str]) -> dict[str, Any]:
    shape = [int(d) for d in re.split(r"[,\s]+", match["shape"].strip()) if d]
    tensor: dict[str, Any] = {"name": match["name"].strip(), "shape": shape, "dtype": match["dtype"]}
    for key, value in _FIELD.findall(match["rest"]):
        tensor[key.strip().replace(" ", "_")] = _number(value)
    return tensor


def parse_info(text: str) -> dict[str, Any]:
    """Chip, version, nets (static/dynamic, per stage inputs/outputs with shape, dtype, scale)
    and device/host memory, from `tpu_model --info` output. Raises BmodelInfoError when it holds
    no chip or no net."""
    info: dict[str, Any] = {"nets": []}
    net: dict[str, Any] | None = None
    stage: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if match := _NET.match(line):
            net = {"name": match["name"], "dynamic": match["kind"].lower() == "dynamic", "stages": []}
            info["nets"].append(net)
            stage = None
        elif (match := _STAGE.match(line)) and net is not None:
            stage = {"inputs": [], "outputs": []}
            net["stages"].append(stage)
        elif match := _TENSOR.match(line):
            if net is None:
                continue
            if stage is None:  # some versions print tensors without a 'stage N:' line
                stage = {"inputs": [], "outputs": []}
                net["stages"].append(stage)
            stage[match["io"] + "s"].append(_tensor(match))
        elif match := _MEM.match(line):
            memory: dict[str, Any] = {"total": int(match["total"])}
            for key, value in _FIELD.findall(match["parts"] or ""):
                memory[key.strip()] = _number(value)
            info[f"{match['which'].lower()}_mem"] = memory
        elif ":" in line and net is None:
            key, _, value = line.partition(":")
            key = key.strip().lower().replace(" ", "_")
            if key in ("bmodel_version", "chip", "create_time"):
                info[key] = value.strip()
    if "chip" not in info or not info["nets"]:
        raise BmodelInfoError("no chip and net found in tpu_model --info output")
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the log: 'BM1684 static resnet: 2 stage(s), inputs input.1 [1,3,8,8] float32; device mem 1234'."""
    parts = []
    for net in info["nets"]:
        stages = net["stages"]
        inputs = "; ".join(", ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in st["inputs"]) for st in stages)
        parts.append(f"{'dynamic' if net['dynamic'] else 'static'} net {net['name']} "
                     f"({len(stages)} stage(s): {inputs})")
    device = info.get("device_mem", {}).get("total")
    return f"{info['chip']} " + ", ".join(parts) + (f", device mem {device} bytes" if device is not None else "")


# --- as steps: the `--info` command of each bmodel, then its output parsed into the metrics --------
def info_steps(ctx: "StageContext", bmodels: dict[str, Path], info: Callable[[Path, Path], "Command"]) -> list["Step"]:
    """`info(bmodel, output_file)` (tpu_model/model_tool --info, its output kept in the work folder)
    for each bmodel, then `record_bmodels`: the stage's `bmodels` metrics (report.json)."""
    from bmbuild.steps import InProcess

    outputs = {label: ctx.work_dir / f"{label}.info.txt" for label in bmodels}
    commands: list[Step] = [info(path, outputs[label]) for label, path in bmodels.items()]
    tool = commands[0].tool if commands else "tpu_model"  # type: ignore[union-attr]
    return commands + [InProcess(f"{__name__}:record_bmodels", {"bmodels": bmodels, "outputs": outputs, "tool": tool},
                                 says=f"{tool} --info of every bmodel -> the stage's metrics (report.json)")]


def record_bmodels(ctx: "StageContext", bmodels: dict[str, Path], outputs: dict[str, Path], tool: str) -> None:
    """The `--info` outputs (label -> file) parsed into `ctx.metrics["bmodels"]`."""
    from bmbuild.commands import quote
    from bmbuild.errors import ToolchainError

    found = {}
    for label, path in bmodels.items():
        text = outputs[label].read_text(encoding="utf-8", errors="replace")
        try:
            found[label] = parse_info(text)
        except BmodelInfoError as exc:
            raise ToolchainError(f"{tool} --info {path.name}: {exc}", f"{tool} --info {quote(str(path))}", 0,
                                 "\n".join(text.splitlines()[-10:])) from None
        ctx.log.info(f"{label}: {describe(found[label])}")
    ctx.metrics["bmodels"] = found
