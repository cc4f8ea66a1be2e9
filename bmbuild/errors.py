"""The error types bmbuild raises. The CLI turns each into a message and an exit code;
only an error outside this hierarchy is a bug and gets a traceback.

Exit codes, one rule (README "Exit codes"): 2 when the user's input is wrong and no build could
have succeeded — a recipe, data, a missing or unreadable file, a toolchain that cannot be used
here — whether found before any stage or while one runs (a DataError raised by calibrate is 2);
1 when a stage ran and failed — a tool exited non-zero, a check or tolerance gate failed, the
model's code raised or exited; 3 for a bug in bmbuild. Several failures: the highest code wins.
"""

from __future__ import annotations

from pathlib import Path


class BmbuildError(Exception):
    """Root of every error a user can cause or fix. Printed without a traceback."""

    exit_code = 2
    # when a stage fails with this error, the console shows the tail of the stage's log under
    # the message; False when the message already holds what matters (a tool's output tail)
    shows_log_tail = True


class RecipeError(BmbuildError):
    """A recipe (or a file it names) is wrong. Names the file, the line and the key."""

    def __init__(self, message: str, file: str | Path | None = None,
                 line: int | None = None, key: str | None = None, hint: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file or "<recipe>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.key:
            text += f"{self.key}: "
        text += self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class DataError(BmbuildError):
    """Input data (calibration samples, evaluation sets) cannot be used. Names the file."""

    def __init__(self, message: str, file: str | Path | None = None):
        self.file = str(file) if file is not None else None
        super().__init__(f"{self.file}: {message}" if self.file else message)


class ToolchainError(BmbuildError):
    """An external tool failed (exit code 1: it ran, with an exit status) or a toolchain cannot be
    used here: unknown, not installed, a tool that cannot be started (exit code 2)."""

    def __init__(self, message: str, command: list[str] | str | None = None,
                 returncode: int | None = None, output_tail: str = ""):
        self.command = command
        self.returncode = returncode
        self.output_tail = output_tail
        self.exit_code = 1 if returncode is not None else 2
        self.shows_log_tail = not output_tail
        text = message
        if command is not None:
            cmd = command if isinstance(command, str) else " ".join(map(str, command))
            text += f"\n  command: {cmd}"
        if returncode is not None:
            text += f"\n  exit code: {returncode}"
        if output_tail:
            text += "\n  output tail:\n" + "\n".join("    " + ln for ln in output_tail.splitlines())
        super().__init__(text)


class StageFailed(BmbuildError):
    """A stage ran and did not do its job (a check or an accuracy gate failed)."""

    exit_code = 1


class UserCodeError(StageFailed):
    """Code a stage ran (the model's, or a library it calls) raised or tried to end the process.

    The message holds the exception and the frames of the user's own files; the full traceback
    is in the stage's log (so the console does not show the log's tail).
    """

    shows_log_tail = False


class InternalError(StageFailed):
    """A bug in bmbuild surfaced while a stage ran: raised by bmbuild's own code, with no frame of
    the user's. Exit code 3, like any bug; the message carries bmbuild's traceback."""

    exit_code = 3
    shows_log_tail = False


class WorkspaceBusy(BmbuildError):
    """Another bmbuild process holds the workspace lock."""
