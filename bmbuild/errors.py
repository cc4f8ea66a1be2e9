"""The error types bmbuild raises. The CLI turns each into a message and an exit code;
only an error outside this hierarchy is a bug and gets a traceback."""

from __future__ import annotations

from pathlib import Path


class BmbuildError(Exception):
    """Root of every error a user can cause or fix. Printed without a traceback."""

    exit_code = 2


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
    """An external tool failed or a toolchain cannot be used here."""

    def __init__(self, message: str, command: list[str] | str | None = None,
                 returncode: int | None = None, output_tail: str = ""):
        self.command = command
        self.returncode = returncode
        self.output_tail = output_tail
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


class WorkspaceBusy(BmbuildError):
    """Another bmbuild process holds the workspace lock."""
