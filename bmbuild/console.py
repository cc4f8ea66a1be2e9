"""What the user sees while a build runs: rich progress on a terminal, plain lines otherwise.

Called from doit worker threads, so every method takes the lock.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bmbuild.executor import NodeRecord, Outcome
from bmbuild.progress import StageProgress

STYLES = {
    Outcome.EXECUTED: "green",
    Outcome.RESTORED: "cyan",
    Outcome.UP_TO_DATE: "dim",
    Outcome.FAILED: "bold red",
    Outcome.BLOCKED: "yellow",
}


class BuildConsole:
    """Prints one line per finished node. On a terminal a live display shows the overall progress
    and one row per running stage (its progress inside the stage and its elapsed time); plain
    output (CI, a pipe) gets timestamped lines instead: a stage starting, each quarter of its work."""

    def __init__(self, stream: Any = None, force_plain: bool = False, quiet: bool = False,
                 verbose: int = 0, color: str = "auto"):
        stream = stream or sys.stdout
        self.interactive = not force_plain and stream.isatty()
        self.console = make_console(stream, color, self.interactive)
        self.quiet = quiet
        self.verbose = verbose
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: Any = None
        self._total = self._done = 0                   # stages in the run, finished (terminal)
        self._rows: dict[str, Any] = {}                 # node id -> its progress row (terminal)
        self._started: dict[str, float] = {}            # node id -> when it started
        self._steps: dict[str, tuple[str, int]] = {}    # node id -> last coarse step printed (plain)

    def print(self, text: str = "", style: str | None = None) -> None:
        with self._lock:
            self.console.print(text, style=style, markup=False)

    def start(self, total: int) -> None:
        if self.interactive and total:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._total, self._done = total, 0
            self._task = self._progress.add_task("[bold]bmbuild", total=total, detail=f"0/{total} stages")
            self._progress.start()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def node_event(self, event: str, node: Any, record: Any) -> None:
        """`record`: the NodeRecord of a "done" node, the StageProgress of a "progress" event."""
        if event == "done" and record is not None:
            self.node_done(record)
        elif event == "progress" and record is not None:
            self.node_progress(node.id, record)
        elif event in ("run", "restore"):
            self.node_started(event, node.id, _where(record))

    def node_started(self, event: str, node_id: str, where: str = "") -> None:
        """A row of its own (with its elapsed time) per running stage; a timestamped line when plain."""
        verb = "restoring" if event == "restore" else "running"
        with self._lock:
            self._started.setdefault(node_id, time.monotonic())
            if self._progress is not None:
                if node_id in self._rows:  # a cluster stage: run on a worker, then restored here
                    self._progress.update(self._rows[node_id], description=f"  {verb} {node_id}{where}")
                else:
                    self._rows[node_id] = self._progress.add_task(f"  {verb} {node_id}{where}", total=None,
                                                                  detail="")
                return
        if event == "run" and not self.quiet:
            self.print(f"  running    {node_id}{where}  [{_clock()}]")

    def node_progress(self, node_id: str, progress: StageProgress) -> None:
        """How far a running stage is: its row's bar, or (plain) a timestamped line per coarse step."""
        with self._lock:
            if self._progress is not None:
                if node_id in self._rows:
                    self._progress.update(self._rows[node_id], total=max(1, progress.total),
                                          completed=progress.done, detail=progress.text())
                return
            mark = (progress.label, progress.step)
            if self.quiet or self._steps.get(node_id) == mark:
                return
            self._steps[node_id] = mark
            elapsed = time.monotonic() - self._started.get(node_id, time.monotonic())
        self.print(f"  progress   {node_id}  {progress.text()} ({100 * progress.done // max(1, progress.total)}%) "
                   f"{elapsed:.1f}s  [{_clock()}]", style="dim")

    def node_done(self, record: NodeRecord) -> None:
        if self._progress is not None:
            with self._lock:
                row = self._rows.pop(record.node_id, None)
                if row is not None:
                    self._progress.remove_task(row)
                self._done += 1
                self._progress.update(self._task, advance=1, detail=f"{self._done}/{self._total} stages")
        if self.quiet and record.outcome not in (Outcome.FAILED, Outcome.BLOCKED):
            return
        self.print(format_record(record), style=STYLES.get(record.outcome))
        if self.verbose and record.reason:
            self.print(f"             why: {record.reason}", style="dim")
        if self.verbose and record.log:
            self.print(f"             log: {record.log}", style="dim")


def make_console(stream: Any, color: str = "auto", interactive: bool | None = None) -> Console:
    """A rich console on `stream`. color: auto (colours on a terminal, unless $NO_COLOR is set),
    always (colours even into a pipe or file, for CI logs that render ANSI), never."""
    if interactive is None:
        interactive = stream.isatty()
    if color == "always":
        return Console(file=stream, highlight=False, soft_wrap=True, force_terminal=True,
                       color_system="standard")
    return Console(file=stream, highlight=False, soft_wrap=True, force_terminal=interactive or None,
                   no_color=color == "never" or not interactive)


def _clock() -> str:
    """The time of day for plain (CI) lines, which have no live elapsed display."""
    return time.strftime("%H:%M:%S")


def _where(record: NodeRecord | None) -> str:
    """' on <worker>' for a stage that runs on a cluster worker."""
    return f" on {record.worker}" if record is not None and record.worker else ""


def format_record(record: NodeRecord) -> str:
    """One line per node: outcome, id, time, summary (and time saved by the cache)."""
    line = f"  {record.outcome.value:<10} {record.node_id:<36}"
    if record.outcome in (Outcome.EXECUTED, Outcome.RESTORED):
        line += f" {record.seconds:7.2f}s"
    if record.outcome is Outcome.RESTORED and record.saved_seconds:
        line += f" (saved {record.saved_seconds:.1f}s)"
    if record.outcome is Outcome.EXECUTED and record.worker:
        line += f" on {record.worker}"
    if record.summary and record.outcome is not Outcome.FAILED:
        line += f"  {record.summary}"
    if record.outcome is Outcome.BLOCKED:
        line += "  (an upstream stage failed)"
    return line.rstrip()
