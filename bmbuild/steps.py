"""Steps as data: what a stage does, as the list its toolchain returns, run by one runner.

A toolchain says, for each stage, the steps it takes (`Toolchain.steps(stage, ctx)`): a `Command`
(argv, working folder, environment, expected outputs, success banner; bmbuild.commands) or an
`InProcess` step, a function named as "module:function" with plain-data keyword arguments, called
as `function(ctx, **args)`. Nothing runs while the list is built, so `run --dry-run` renders the
very list a run executes (`render`), and `run_steps` is the only code that executes one:

- it appends each step's rendering to `<stage>.cmd` as the step starts (a `#` comment for an
  in-process step), when the stage runs at least one command (a stage done all in Python, as on the
  reference toolchain, has no `.cmd`);
- it runs Commands with `run_command` (exit code, output tail, banner, expected files);
- it calls in-process functions and checks that the files they declare exist.

A step whose arguments depend on an earlier step's result (layer names read from a file a Command
wrote) is an in-process step that reads that file when it runs.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from bmbuild.commands import IN_PROCESS, Command, append_command_line, comment, quote, run_command, \
    start_command_file
from bmbuild.errors import ToolchainError

if TYPE_CHECKING:
    from bmbuild.stagecontext import StageContext

PLAIN_TYPES = (str, int, float, bool, type(None), Path)


@dataclass(frozen=True)
class InProcess:
    """A step done in Python: `function(ctx, **args)`, which must leave `outputs` behind."""

    function: str                                        # "package.module:function"
    args: dict[str, Any] = field(default_factory=dict)   # plain data only (`check_plain`)
    outputs: tuple[Path, ...] = ()                       # files that must exist after it returns
    says: str = ""                                       # what it does, in the vendor's words

    def __post_init__(self) -> None:
        module, _, name = self.function.partition(":")
        if not module or not name.isidentifier():
            raise ValueError(f"an in-process step names its function as 'module:function', not {self.function!r}")
        check_plain(self.args, self.function)

    def line(self) -> str:
        """`[in-process] <what it does>; <function>(<arguments>)`: one line, printed as a comment."""
        call = f"{self.function}({', '.join(f'{key}={shown(value)}' for key, value in self.args.items())})"
        return f"{IN_PROCESS} {self.says}; {call}" if self.says else f"{IN_PROCESS} {call}"


Step = Union[Command, InProcess]


def check_plain(value: Any, where: str) -> None:
    """Raise ValueError unless `value` is str/int/float/bool/None/Path, or lists and str-keyed dicts of them."""
    if isinstance(value, PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, where)
        return
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        for item in value.values():
            check_plain(item, where)
        return
    raise ValueError(f"{where}: argument {value!r} ({type(value).__name__}) is not plain data")


def shown(value: Any) -> str:
    """An argument as printed: a string or path as one shell word, anything else as JSON."""
    if isinstance(value, (str, Path)):
        return quote(str(value))
    return json.dumps(value, default=str, sort_keys=True)


def render(step: Step) -> str:
    """The step as `run --dry-run` prints it and `<stage>.cmd` records it (before `paste_safe`)."""
    return step.shell() if isinstance(step, Command) else step.line()


def run_steps(ctx: "StageContext", steps: list[Step], title: str) -> None:
    """Execute `steps` in order (see the module docstring); the first failure raises."""
    recorded = any(isinstance(step, Command) for step in steps)
    if recorded:
        start_command_file(ctx.log, title)
    for step in steps:
        if isinstance(step, Command):
            run_command(step, ctx.log)
        else:
            run_in_process(ctx, step, recorded)


def run_in_process(ctx: "StageContext", step: InProcess, recorded: bool) -> None:
    line = step.line()
    if recorded:
        append_command_line(ctx.log, comment(line))
    ctx.log.info(line)
    resolve(step)(ctx, **step.args)
    missing = [str(path) for path in step.outputs if not path.exists()]
    if missing:
        error = ToolchainError(f"in-process step {step.function} returned but did not write {', '.join(missing)}",
                               comment(line))
        error.exit_code = 1  # the stage ran and failed, as a tool that exits 0 without its output
        raise error


def copy_file(ctx: "StageContext", source: Path, target: Path) -> None:
    """The simplest in-process step, shared by the toolchains: a file copied as it is."""
    import shutil

    shutil.copyfile(source, target)


def resolve(step: InProcess) -> Callable[..., None]:
    """The function a step names (imported now: a stage's heavy imports happen when it runs)."""
    module_name, _, name = step.function.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ToolchainError(f"in-process step {step.function} cannot be loaded: {exc}") from None
    return function
