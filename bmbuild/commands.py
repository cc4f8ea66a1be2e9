"""Running a vendor command the way a user would: one line in `<stage>.cmd`, its output in the log.

A `Command` is plain data (argv, working folder, extra environment, what it must produce), so the
same object is rendered by `--dry-run` and run by a stage. `run_command` streams the tool's output
into the stage log line by line and turns every way a vendor tool fails into a `ToolchainError`
naming the command, its exit code and the tail of its output:

- a non-zero exit status;
- no `# Store bmodel of BMCompiler.` banner from bmnetp/bmnetu (their documented success line);
- exit status 0 but a promised output file missing.

Every line bmbuild prints for a user to paste (`<stage>.cmd`, `run --dry-run`) is safe to paste:
each word is quoted (`quote`), descriptions and comments are `#` comments (`comment`), and no line
ever holds a raw newline, carriage return or other character that is not printable, so a path
cannot end a comment or a quoted word early and start a command of its own.
"""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bmbuild.errors import ToolchainError

if TYPE_CHECKING:
    from bmbuild.stagelog import StageLog

IN_PROCESS = "[in-process]"  # how a step done in Python is rendered (bmbuild.steps.InProcess)

# bmnetp.md / bmnetu.md: a successful compile ends its log with this line (between '#' rules).
BMCOMPILER_BANNER = "# Store bmodel of BMCompiler."
TAIL_LINES = 12


@dataclass(frozen=True)
class Command:
    """One command line of a stage: what runs, where, and what it must leave behind."""

    tool: str                                   # short name for messages: bmnetp, bmnetu, ...
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)   # set on top of the current environment
    outputs: tuple[Path, ...] = ()              # files that must exist after a successful run
    banner: bool = False                        # expect the BMCompiler success banner
    hint: str = ""                              # added to the message of a non-zero exit
    lock: Path | None = None                    # a file lock held while it runs (a shared tool environment)
    output_file: Path | None = None             # where its output is kept for a later step to read

    def shell(self) -> str:
        """One shell line a user can paste anywhere: `[VAR=value ...] argv...  # cwd: <dir>`.

        Every path in argv is absolute, so the working folder (the stage's private work folder,
        removed after the stage) is only recorded, in a trailing comment (quoted like the words).
        """
        assignments = [f"{name}={quote(value)}" for name, value in self.env.items()]
        words = " ".join([*assignments, *map(quote, self.argv)])
        return f"{words}  {comment('cwd: ' + quote(str(self.cwd)))}"


def quote(word: str) -> str:
    """`word` as one shell word whose printed form is a single line of printable characters.

    `shlex.quote` when every character is printable; otherwise bash's `$'...'` with each character
    that is not printable as `\\xHH` escapes of its bytes (shlex.quote would keep a newline raw:
    correct for a shell, but it splits the printed line, and a terminal runs a pasted carriage return).
    """
    if word.isprintable():
        return shlex.quote(word)
    return "$'" + "".join(_ansi_c(char) for char in word) + "'"


def _ansi_c(char: str) -> str:
    """One character inside `$'...'` (a quote as `\\x27`: no `'` inside, for bash's history expansion too)."""
    if char == "\\":
        return "\\\\"
    if char.isprintable() and char != "'":
        return char
    try:  # a path's undecodable bytes come back as surrogate escapes: print the original bytes
        data = char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = char.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{byte:02x}" for byte in data)


def printable(text: str) -> str:
    """`text` with every character that is not printable written as its Python escape (`\\n`)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def comment(text: str) -> str:
    """A `#` comment line: pasted, it runs nothing (no character in it can end the comment)."""
    return "# " + printable(text)


def paste_safe(line: str) -> str:
    """A rendered step (`bmbuild.steps.render`) as printed: a shell line from `Command.shell()` unchanged,
    everything else (`[in-process] ...` descriptions, anything not printable) as a comment."""
    if line.startswith("#"):
        return comment(line[1:].lstrip())
    if line.startswith(IN_PROCESS) or not line.isprintable():
        return comment(line)
    return line


def command_file(log: "StageLog") -> Path:
    """`build/<recipe>/logs/<stage>.cmd`, beside the stage's log (as tpu-perf writes `<title>.cmd`)."""
    return log.path.with_suffix(".cmd")


def start_command_file(log: "StageLog", header: str) -> None:
    """A fresh `.cmd` for this run of the stage (commands are appended as they start)."""
    command_file(log).write_text(comment(header) + "\n", encoding="utf-8")


def append_command_line(log: "StageLog", line: str) -> None:
    """One more line in the stage's `.cmd` (after `start_command_file`)."""
    with open(command_file(log), "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def run_command(command: Command, log: "StageLog", capture: bool = False) -> str:
    """Run `command`, output streamed into `log` (and into `command.output_file` when set), holding
    `command.lock` when set; returns the output when `capture` is set.

    Raises ToolchainError when the tool cannot start, exits non-zero, omits its success banner or
    does not write a promised output; `command.hint` is added to the message of a non-zero exit.
    """
    if command.lock is None:
        return _run(command, log, capture)
    from filelock import FileLock

    command.lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(command.lock)):
        return _run(command, log, capture)


def _run(command: Command, log: "StageLog", capture: bool) -> str:
    line = command.shell()
    append_command_line(log, line)
    log.info(f"$ {line}")
    command.cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **command.env}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    captured: list[str] = []
    banner_seen = False
    try:
        process = subprocess.Popen(list(command.argv), cwd=command.cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", bufsize=1)
    except OSError as exc:
        raise ToolchainError(f"{command.tool} could not be started: {exc.strerror or exc}", line) from None
    try:
        assert process.stdout is not None
        for output_line in process.stdout:
            log.write_raw(output_line if output_line.endswith("\n") else output_line + "\n")
            tail.append(output_line.rstrip("\n"))
            if capture or command.output_file is not None:
                captured.append(output_line)
            if output_line.strip() == BMCOMPILER_BANNER:
                banner_seen = True
        returncode = process.wait()
    except BaseException:  # interrupted: do not leave the tool running on its own
        process.kill()
        process.wait()
        raise
    output_tail = "\n".join(tail)
    if returncode != 0:
        hint = f" ({command.hint})" if command.hint else ""
        raise ToolchainError(f"{command.tool} failed{hint}", line, returncode, output_tail)
    if command.banner and not banner_seen:
        raise ToolchainError(f"{command.tool} exited 0 without its success banner "
                             f"'{BMCOMPILER_BANNER}': the bmodel is not trusted", line, returncode, output_tail)
    missing = [str(path) for path in command.outputs if not path.is_file()]
    if missing:
        raise ToolchainError(f"{command.tool} exited 0 but did not write {', '.join(missing)}",
                             line, returncode, output_tail)
    if command.output_file is not None:
        command.output_file.parent.mkdir(parents=True, exist_ok=True)
        command.output_file.write_text("".join(captured), encoding="utf-8")
    return "".join(captured)
