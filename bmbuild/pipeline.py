"""The pipeline's vocabulary, below every layer that speaks it: the stage names, in order, and
what can happen to a stage in a run.

Stages, the engine and the reports name stages through `StageName` and outcomes through
`Outcome`, so no module needs the stage implementations or the engine (and what they import)
to know which stages exist, their order, or how a run went.
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
COMPILE_STAGES: tuple[str, ...] = (StageName.COMPILE_FP32.value, StageName.COMPILE_INT8.value)


class Outcome(Enum):
    """What happened to a node in a run."""

    UP_TO_DATE = "up-to-date"
    RESTORED = "restored"
    EXECUTED = "executed"
    FAILED = "failed"
    BLOCKED = "blocked"


# The outcomes of a stage whose outputs are good.
OK_OUTCOMES: tuple[Outcome, ...] = (Outcome.EXECUTED, Outcome.RESTORED, Outcome.UP_TO_DATE)
