"""The pipeline's stages, in order. Each module defines one `STAGE`."""

from __future__ import annotations

import importlib

from bmbuild.pipeline import PIPELINE_ORDER
from bmbuild.stages.base import Stage

STAGE_MODULES = PIPELINE_ORDER  # one module per stage, named after it


def all_stages() -> list[Stage]:
    """Every stage whose module exists, in pipeline order."""
    stages = []
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(f"bmbuild.stages.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bmbuild.stages.{name}":
                continue
            raise
        stages.append(module.STAGE)
    return stages


__all__ = ["Stage", "all_stages", "STAGE_MODULES"]
