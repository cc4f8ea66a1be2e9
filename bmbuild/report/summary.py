"""summary.json: the collected summary itself (bmbuild.report.collect), for machines."""

from __future__ import annotations

import json
from typing import Any


def render(summary: dict[str, Any]) -> bytes:
    return json.dumps(summary, indent=1, sort_keys=True).encode() + b"\n"
