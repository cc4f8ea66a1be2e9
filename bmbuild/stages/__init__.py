"""The pipeline's stages, in order. Each module defines one `STAGE`."""

from __future__ import annotations

import importlib

from bmbuild.stages.base import Stage, StageContext

STAGE_MODULES = ("trace", "compile_fp32", "calibrate", "quantize", "compile_int8")


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


__all__ = ["Stage", "StageContext", "all_stages", "STAGE_MODULES"]
