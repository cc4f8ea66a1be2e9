"""junit.xml: one <testsuite> per model, one <testcase> per stage (blocked stages: see the package doc)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from bmbuild.report.collect import BLOCKED, FAILED, RESTORED, ModelStatus
from bmbuild.report.formatting import first_line, fmt_seconds


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
            if stage["outcome"] == FAILED:
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", message=_x(first_line(stage["error"]) or "failed"),
                                        type="StageFailed")
                text = stage["error"]
                if stage["log_tail"]:
                    text += f"\n\nlog tail ({stage['log']}):\n{stage['log_tail']}"
                elif stage["log"]:
                    text += f"\n\nfull log: {stage['log']}"
                failure.text = _x(text)
            elif stage["outcome"] == BLOCKED:
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
    if stage["outcome"] == RESTORED:
        text += f" from cache (saved {fmt_seconds(stage['saved_seconds'])})"
    if stage["reason"]:
        text += f" ({stage['reason']})"
    if stage["summary"]:
        text += f": {stage['summary']}"
    return text


def render(summary: dict[str, Any]) -> bytes:
    return junit_xml(summary)
