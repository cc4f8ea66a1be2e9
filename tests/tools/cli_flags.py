"""A tool command line's flags, parsed independently of the importer: the oracle that the tpu-perf
import tests and benchmarks/import_sweep.py compare bmbuild's dry runs with."""

from __future__ import annotations

import re
import shlex


def flags(words: list[str]) -> dict[str, str | None]:
    """--key=value / -key=value / --key value; try_cali_accuracy_opt always takes the next word."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(words):
        match = re.fullmatch(r"--?([A-Za-z_]\w*)(?:=(.*))?", words[i], re.DOTALL)
        if match:
            name, value = match.group(1), match.group(2)
            if value is None and i + 1 < len(words) and (
                    name == "try_cali_accuracy_opt" or not re.match(r"--?[A-Za-z_]", words[i + 1])):
                value, i = words[i + 1], i + 1
            out[name] = value
        i += 1
    return out


def dry_run_commands(stdout: str) -> list[list[str]]:
    """The shell commands of a `bmbuild run --dry-run` print, as words (environment assignments left out)."""
    commands = []
    for line in stdout.splitlines():
        if line.startswith("  ") and not line.strip().startswith(("#", "[in-process]", "error:")):
            words = shlex.split(line, comments=True)
            commands.append([w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)])
    return commands
