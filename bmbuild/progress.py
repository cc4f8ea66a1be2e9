"""Progress inside a long stage (calibration, the int8/fp32 comparison, evaluation).

A stage's loop calls `ctx.progress(done, total, label)`. A `ProgressReporter` turns the calls
into (a) a line in the stage's log at coarse steps (every quarter), and (b) a `StageProgress`
for the console: handed to a callback when the stage runs in bmbuild's process (`-j 1`), or
written to a small file the parent polls when it runs in a worker process (`-j N`), or sent as a
Dask event when it runs on a cluster worker (bmbuild.cluster). Updates are throttled, so a loop
may report after every sample; the first update of each coarse step always goes on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from bmbuild.stagelog import StageLog

STEPS = 4                 # coarse steps: the log (and plain console output) gets a line per quarter
MIN_INTERVAL = 0.1        # seconds between two updates handed on (the last one always is)
PROGRESS_FILE = ".bmbuild-progress.json"


@dataclass(frozen=True)
class StageProgress:
    """How far a stage's current loop is: `done` of `total` `label` (e.g. 'calibration samples')."""

    done: int
    total: int
    label: str = "samples"

    @property
    def step(self) -> int:
        """The coarse step reached (0..STEPS): a line is written when it changes."""
        return STEPS if self.total <= 0 else min(STEPS, self.done * STEPS // self.total)

    def text(self) -> str:
        return f"{self.done}/{self.total} {self.label}".rstrip()

    def to_json(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "label": self.label}


def parse_progress(data: Any) -> StageProgress | None:
    """A StageProgress from JSON written by a worker; None when it is not of that shape (untrusted)."""
    if not isinstance(data, dict):
        return None
    done, total, label = data.get("done"), data.get("total"), data.get("label", "")
    if not (isinstance(done, int) and isinstance(total, int) and isinstance(label, str)) or isinstance(
            done, bool) or isinstance(total, bool) or not 0 <= done <= total:
        return None
    return StageProgress(done, total, label[:80])


def read_progress(path: Path) -> StageProgress | None:
    """The progress a worker last wrote to `path`; None when there is none (yet) or it is unreadable."""
    try:
        return parse_progress(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError):
        return None


def write_progress(path: Path, progress: StageProgress) -> None:
    """Replace `path` in one step, so the polling parent never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(progress.to_json()), encoding="utf-8")
    os.replace(tmp, path)


class ProgressReporter:
    """Receives a stage's `ctx.progress` calls; logs coarse steps and hands updates on (throttled)."""

    def __init__(self, log: "StageLog | None" = None, sink: Callable[[StageProgress], None] | None = None):
        self.log = log
        self.sink = sink
        self._started = time.monotonic()
        self._last_sent = 0.0
        self._logged: tuple[str, int] | None = None
        self._sent: tuple[str, int] | None = None  # the coarse step last handed on

    @classmethod
    def to_file(cls, log: "StageLog | None", path: Path) -> "ProgressReporter":
        """For a stage in a worker: updates go to `path`, which the parent polls."""
        return cls(log, lambda progress: write_progress(path, progress))

    def __call__(self, done: int, total: int, label: str = "samples") -> None:
        progress = StageProgress(max(0, min(int(done), int(total))), max(0, int(total)), label)
        self._log_step(progress)
        now = time.monotonic()
        mark = (progress.label, progress.step)  # a new coarse step always goes on: plain output prints those
        if self.sink is not None and (now - self._last_sent >= MIN_INTERVAL or mark != self._sent
                                      or progress.done == progress.total):
            self._last_sent, self._sent = now, mark
            try:
                self.sink(progress)
            except OSError:  # progress is only shown: a full disk must not fail the stage
                pass

    def _log_step(self, progress: StageProgress) -> None:
        mark = (progress.label, progress.step)
        if self.log is None or mark == self._logged or (
                self._logged is not None and self._logged[0] == progress.label and progress.step < self._logged[1]):
            return
        self._logged = mark
        self.log.info(f"# progress: {progress.text()} ({100 * progress.done // max(1, progress.total)}%) "
                      f"after {time.monotonic() - self._started:.1f}s")
