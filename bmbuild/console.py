"""What the user sees while a build runs: rich progress on a terminal, plain lines otherwise.

Called from doit worker threads, so every method takes the lock.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bmbuild.executor import NodeRecord, Outcome

STYLES = {
    Outcome.EXECUTED: "green",
    Outcome.RESTORED: "cyan",
    Outcome.UP_TO_DATE: "dim",
    Outcome.FAILED: "bold red",
    Outcome.BLOCKED: "yellow",
}


class BuildConsole:
    """Prints one line per finished node; shows a progress bar when stdout is a terminal."""

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

    def print(self, text: str = "", style: str | None = None) -> None:
        with self._lock:
            self.console.print(text, style=style, markup=False)

    def start(self, total: int) -> None:
        if self.interactive and total:
            self._progress = Progress(TextColumn("[bold]bmbuild"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._task = self._progress.add_task("", total=total)
            self._progress.start()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def node_event(self, event: str, node: Any, record: NodeRecord | None) -> None:
        if event == "done" and record is not None:
            self.node_done(record)
        elif self._progress is not None:
            with self._lock:
                verb = "restoring" if event == "restore" else "running"
                self._progress.update(self._task, description=f"{verb} {node.id}{_where(record)}")
        elif event == "run" and not self.quiet:
            self.print(f"  running    {node.id}{_where(record)}")

    def node_done(self, record: NodeRecord) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.advance(self._task)
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
