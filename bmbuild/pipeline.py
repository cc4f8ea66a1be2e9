"""The pipeline's vocabulary, below every layer that speaks it: the stage names, in order.

Stages, the engine and the reports name stages through `StageName`, so no module needs the
stage implementations (and what they import) to know which stages exist or their order.
"""

from __future__ import annotations

from enum import Enum


class StageName(str, Enum):
    """A stage of the pipeline; the members are in pipeline order. Equal to its plain string,
    so it keys dicts and JSON read back from report.json files as well."""

    TRACE = "trace"
    COMPILE_FP32 = "compile_fp32"
    CALIBRATE = "calibrate"
    QUANTIZE = "quantize"
    COMPILE_INT8 = "compile_int8"

    def __str__(self) -> str:
        return self.value


PIPELINE_ORDER: tuple[str, ...] = tuple(stage.value for stage in StageName)
INT8_STAGES: tuple[str, ...] = (StageName.CALIBRATE.value, StageName.QUANTIZE.value, StageName.COMPILE_INT8.value)
