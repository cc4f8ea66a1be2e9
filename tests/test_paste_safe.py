"""Every line bmbuild prints for a user to paste (`<stage>.cmd`, `run --dry-run`) runs only the tool.

A path may hold a newline, a carriage return, quotes, `;`, `$(...)` or escape sequences: bash must
read each printed line as exactly the words bmbuild runs, and no printed line may hold a character
that is not printable (a raw newline ends a `#` comment; a terminal runs a pasted carriage return).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bmbuild.stagelog import StageLog
from bmbuild.commands import Command, command_file, paste_safe, quote, start_command_file
from test_nntc_toolchain import DOUBLE, activate, invocations

# a folder name: no '/' and no NUL, anything else goes
HOSTILE = "we\nird; touch PWNED1 $(touch PWNED2) `touch PWNED3` it's \"q\" \\ !x \r\x1b[2J\u2028end"


def bash_words(line: str, cwd: Path) -> list[str]:
    """The words bash makes of `line` (quotes removed, comments dropped), running nothing else."""
    script = f"for word in {line}\ndo printf '%s\\0' \"$word\"; done"
    out = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, check=True).stdout
    return out.decode("utf-8", "surrogateescape").split("\0")[:-1]


def pwned(root: Path) -> list[Path]:
    return [p for p in root.rglob("PWNED*")]


def test_quote_is_one_printable_shell_word(tmp_path):
    for word in ["plain/path", "a b", "", HOSTILE, "it's", "\\", "\udc80raw bytes", "é ü", "-x=1\t2"]:
        quoted = quote(word)
        assert quoted.isprintable(), quoted
        assert bash_words(quoted, tmp_path) == [word]
    assert quote("/plain/path.pt") == "/plain/path.pt"  # unchanged when nothing needs quoting
    assert not pwned(tmp_path)


def test_a_command_line_is_exactly_its_argv_and_environment(tmp_path):
    argv = ("tool", HOSTILE, f"--model={tmp_path / HOSTILE / 'm.pt'}", "\udc80raw", "ok")
    line = Command("tool", argv, tmp_path / HOSTILE, env={"PYTHONPATH": HOSTILE}).shell()

    assert line.isprintable(), line
    assert bash_words(line, tmp_path) == [f"PYTHONPATH={HOSTILE}", *argv]
    assert line.endswith("  # cwd: " + quote(str(tmp_path / HOSTILE)))
    # pasted as it is: runs `tool` once, with that argv and environment
    script = f"tool() {{ printf '%s\\0' \"$@\" \"$PYTHONPATH\"; }}\n{line}\n"
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.decode("utf-8", "surrogateescape").split("\0")[:-1] == [*argv[1:], HOSTILE]
    assert not pwned(tmp_path)


def test_the_cmd_header_is_one_comment_line(tmp_path):
    log = StageLog(tmp_path / "logs" / "calibrate.log")
    start_command_file(log, f"tiny calibrate (nntc): in the work folder {tmp_path / HOSTILE}")
    log.close()
    text = command_file(log).read_bytes().decode()
    assert text.startswith("# ") and text.endswith("\n") and text[:-1].isprintable()
    assert bash_words(text, tmp_path) == []


def test_descriptions_and_unprintable_lines_print_as_comments(tmp_path):
    assert paste_safe("[in-process] copy a -> b") == "# [in-process] copy a -> b"
    assert paste_safe(f"tool {HOSTILE}").startswith("# tool we\\nird")
    shell = Command("tool", ("tool", "a b"), tmp_path).shell()
    assert paste_safe(shell) == shell


def hostile_nntc_recipe(workspace: Path, write_recipe) -> Path:
    folder = Path("recipes") / HOSTILE
    (workspace / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(workspace / folder / "calib.npz", x=rng.standard_normal((20, 3, 8, 8)).astype(np.float32))
    return write_recipe("tiny", folder=folder, toolchain="nntc", prec="INT8", batch_sizes=[1, 2],
                        calibration={"data": "calib.npz", "key": "x", "samples": 8, "method": "kl"},
                        int8={"cmp_samples": 4})


def test_dry_run_output_pastes_safely_whole_and_line_by_line(workspace, write_recipe, run_bmbuild, tmp_path):
    recipe = hostile_nntc_recipe(workspace, write_recipe)
    build_dir = workspace / f"build {HOSTILE}"

    code, out, err = run_bmbuild("run", recipe, "--dry-run", "--build-dir", build_dir)

    assert code == 0, out + err
    lines = out.split("\n")
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    commands = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    words = [bash_words(line, tmp_path) for line in commands]
    build = build_dir.resolve() / "tiny"
    bmnetp = [w for w in words if w[1:3] == ["-m", "bmnetp"]]
    assert [w[:4] for w in bmnetp] == [[sys.executable, "-m", "bmnetp", f"--model={build}/trace/tiny.pt"]] * 2
    assert bmnetp[1][-1] == f"--outdir={build}/compile_fp32/2b.fp32.compilation"
    (lmdb,) = [w for w in words if "bmbuild.toolchains.nntc_lmdb" in w]
    calibration = json.loads(lmdb[lmdb.index("--calibration") + 1])
    assert calibration["data"] == str((workspace / "recipes" / HOSTILE / "calib.npz").resolve())
    assert ["tpu_model", "--info", f"{build}/compile_int8/combined.bmodel"] in words
    assert any(line.startswith("# [in-process] torch.jit.trace(") for line in map(str.strip, lines))

    # pasted whole into bash, with the SDK's commands doing nothing: nothing else runs
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in ("bmnetu", "calibration_use_pb", "tpu_model"):
        (stubs / tool).write_text("#!/bin/sh\nexit 0\n")
        (stubs / tool).chmod(0o755)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    env = {"PATH": f"{stubs}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(sandbox)}
    subprocess.run(["bash"], input=out, text=True, cwd=sandbox, env=env, capture_output=True, timeout=120)
    assert not pwned(tmp_path) and not pwned(workspace)


def test_cmd_files_of_a_real_run_are_the_commands_that_ran(workspace, write_recipe, run_bmbuild, tmp_path,
                                                         monkeypatch):
    double_log = tmp_path / "double.jsonl"
    activate(monkeypatch, DOUBLE, double_log)
    recipe = hostile_nntc_recipe(workspace, write_recipe)
    build_dir = workspace / f"build {HOSTILE}"

    code, out, err = run_bmbuild("run", recipe, "--build-dir", build_dir, "--stage", "compile_fp32", "--plain")

    assert code == 0, out + err
    text = (build_dir / "tiny" / "logs" / "compile_fp32.cmd").read_bytes().decode()
    lines = text.split("\n")[:-1]
    assert all(line.isprintable() for line in lines), lines
    assert lines[0].startswith("# ")
    ran = [[entry["tool"], *entry["argv"]] for entry in invocations(double_log)]
    in_process = [line for line in lines[1:] if line.startswith("# [in-process] ")]  # steps done in Python
    assert all(bash_words(line, tmp_path) == [] for line in in_process)               # pasted, they run nothing
    pasted = [bash_words(line, tmp_path) for line in lines[1:] if line not in in_process]
    as_ran = [w[2:] if w[1:2] == ["-m"] else w for w in pasted]  # `python -m bmnetp ...` -> `bmnetp ...`
    assert as_ran == ran
    assert str(build_dir.resolve()) in pasted[0][3]
    assert not pwned(tmp_path)
