"""The model's own code cannot fake success, and its failures read as the user's, not bmbuild's.

- `sys.exit()` or `os._exit()` in a model file (at import or in the callable) fails the stage with
  exit code 1, with `-j 1` (in bmbuild's process) and `-j 2` (in a worker); nothing is published.
- A worker that dies without a result fails its stage.
- An exception in the model's code shows the message and the frames of the user's files on the
  console, none of bmbuild's; the stage log keeps the full traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import read_report, run_subprocess

EXITS = {  # recipe name -> (model, what the message names)
    "import_sys0": ("exit_import_sys0.py:tiny", "sys.exit(0)"),
    "import_sys3": ("exit_import_sys3.py:tiny", "sys.exit(3)"),
    "import_os0": ("exit_import_os0.py:tiny", "os._exit(0)"),
    "call_sys0": ("exits.py:sys_exit_0", "sys.exit(0)"),
    "call_sys3": ("exits.py:sys_exit_3", "sys.exit(3)"),
    "call_os0": ("exits.py:os_exit_0", "os._exit(0)"),
    "call_swallowed": ("exits.py:swallowed_os_exit", "os._exit(0)"),
}

EXITS_PY = '''\
import os
import sys

from tiny_models import tiny_cnn


def sys_exit_0():
    sys.exit(0)


def sys_exit_3():
    sys.exit(3)


def os_exit_0():
    os._exit(0)


def swallowed_os_exit():
    try:
        os._exit(0)
    except BaseException:
        pass
    return tiny_cnn()


def libc_exit_0():
    import ctypes

    ctypes.CDLL(None)._exit(0)


def wait_for(path, seconds=120):
    import time
    from pathlib import Path

    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def crashes_while_a_sibling_runs(started, crashing):
    import ctypes
    import os
    from pathlib import Path

    wait_for(started)
    Path(crashing).write_text(str(os.getpid()))
    ctypes.CDLL(None)._exit(0)


def runs_while_a_sibling_crashes(started, crashing):
    import time
    from pathlib import Path

    if Path(started).exists():  # the stage run again in a worker of its own, after the pool broke
        return tiny_cnn()
    Path(started).write_text("")
    wait_for(crashing)
    time.sleep(0.5)  # the pid is written
    pid = Path(crashing).read_text()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # still running when the sibling's worker dies and breaks the pool,
        try:                            # however late that is on a loaded machine (the pool then kills this one)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        if state in ("Z", "X", "gone"):
            # the pool notices the death and terminates this worker meanwhile: at once when the machine is
            # quiet, after more than 10 s under CI load (seen). Returning at all means it never did.
            time.sleep(120)
            break
        time.sleep(0.05)
    return tiny_cnn()


def forks_a_child():
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=print)
    child.start()  # the child ends with os._exit(0), which must end it, not raise in it
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the forked child exited {child.exitcode}")
    return tiny_cnn()
'''


def write_exit_models(recipes: Path) -> None:
    (recipes / "exits.py").write_text(EXITS_PY)
    for name, call in (("sys0", "sys.exit(0)"), ("sys3", "sys.exit(3)"), ("os0", "os._exit(0)")):
        (recipes / f"exit_import_{name}.py").write_text(
            f"import os\nimport sys\n\n{call}\n\n\ndef tiny():\n    pass\n")


def line_of(file: Path, text: str) -> int:
    """The number of the first line of `file` that starts with `text` (indentation ignored)."""
    return next(i for i, line in enumerate(file.read_text().splitlines(), 1) if line.strip().startswith(text))


def assert_exit_failed(workspace: Path, name: str, model: str, exit_text: str, out: str) -> None:
    report = read_report(name)
    assert report["stages"]["trace"]["outcome"] == "failed", (name, out)
    assert report["stages"]["compile_fp32"]["outcome"] == "blocked"
    assert f"the code called {exit_text}" in report["stages"]["trace"]["error"]
    assert re.search(rf"{name}:trace failed: the code called {re.escape(exit_text)}: .*nothing was published", out)
    assert not (workspace / "build" / name / "trace").exists()
    assert not (workspace / "build" / name / "compile_fp32").exists()
    file = model.partition(":")[0]
    call = exit_text.replace("(0)", "(").replace("(3)", "(")
    if not file.startswith("exits"):
        assert f'File "recipes/{file}", line 4, in <module>' in out, out
    elif name != "call_swallowed":
        assert f'File "recipes/{file}", line {line_of(workspace / "recipes" / file, call)}' in out, out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_exit_calls_in_model_code_fail_the_stage(workspace, write_recipe, jobs):
    write_exit_models(workspace / "recipes")
    for name, (model, _) in EXITS.items():
        write_recipe(name, source={"model": model})
    if jobs == "2":  # a worker that dies without a result (a C library's exit: nothing to catch)
        write_recipe("call_libc0", source={"model": "exits.py:libc_exit_0"})

    proc = run_subprocess("run", "recipes", "--plain", "-j", jobs, "--keep-going", cwd=workspace, timeout=600)

    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    for name, (model, exit_text) in EXITS.items():
        assert_exit_failed(workspace, name, model, exit_text, out)
    if jobs == "2":
        assert read_report("call_libc0")["stages"]["trace"]["outcome"] == "failed"
        assert "call_libc0:trace failed: the worker process running this stage died without a result" in out
        assert not (workspace / "build" / "call_libc0" / "trace").exists()


def test_a_dead_worker_fails_only_its_own_stage(workspace, write_recipe, tmp_path):
    write_exit_models(workspace / "recipes")
    markers = {"started": str(tmp_path / "started"), "crashing": str(tmp_path / "crashing")}
    write_recipe("a_crash", source={"model": "exits.py:crashes_while_a_sibling_runs", "kwargs": markers})
    write_recipe("b_sibling", source={"model": "exits.py:runs_while_a_sibling_crashes", "kwargs": markers})

    proc = run_subprocess("run", "recipes", "--plain", "-j", "2", "--keep-going", cwd=workspace, timeout=600)

    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert read_report("a_crash", workspace)["stages"]["trace"]["outcome"] == "failed"
    assert "a_crash:trace failed: the worker process running this stage died without a result" in out
    assert read_report("b_sibling", workspace)["ok"] is True, out
    assert (workspace / "build" / "b_sibling" / "compile_fp32" / "b_sibling.onnx").is_file()
    log = (workspace / "build" / "b_sibling" / "logs" / "trace.log").read_text()
    assert "running the stage again in a worker of its own" in log  # the sibling's first worker was killed


def test_a_worker_pool_watches_every_worker_from_its_first_stage():
    """Workers start with the pool: one started on demand after `submit` woke the pool's manager
    thread could die unwatched, its death seen only when a sibling's result arrived."""
    import os
    from concurrent.futures.process import BrokenProcessPool

    from bmbuild.workers import WorkerPool

    pool = WorkerPool(2)._new_pool(2)
    try:
        sleeper = pool.submit(__import__("time").sleep, 300)
        assert len(pool._processes) == 2  # both workers exist before the second stage is submitted
        dying = pool.submit(os._exit, 0)
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=200)
        assert isinstance(sleeper.exception(timeout=200), BrokenProcessPool)  # not after its 300 s
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_a_process_forked_by_model_code_exits_normally(workspace, write_recipe):
    write_exit_models(workspace / "recipes")
    write_recipe("forks", source={"model": "exits.py:forks_a_child"})
    proc = run_subprocess("run", "recipes/forks.yaml", "--plain", cwd=workspace, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_report("forks", workspace)["stages"]["trace"]["outcome"] == "executed"


# --- the user's frames on the console, the full traceback in the log ------------------------------
FAILING_PY = '''\
import torch
from torch import nn

from tiny_models import TinyCnn


def check_channels(channels):
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")


def factory_raises(channels=0):
    check_channels(channels)
    return TinyCnn(channels)


class RaisesInForward(nn.Module):
    def forward(self, x):
        return self.helper(x)

    def helper(self, x):
        raise RuntimeError("forward is broken")


def forward_raises():
    return RaisesInForward()


def tiny(channels=4):
    return TinyCnn(channels)
'''


@pytest.fixture
def user_failures(workspace: Path, write_recipe) -> dict[str, str]:
    """Recipes whose model code fails in four ways; returns name -> the text the console must show."""
    recipes = workspace / "recipes"
    (recipes / "failing.py").write_text(FAILING_PY)
    (recipes / "bad_import.py").write_text("import numpy\nimport not_a_module_anywhere\n\n\ndef tiny():\n    pass\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_models_copy", recipes / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.TinyCnn(4).state_dict(), recipes / "four.pt")  # weights of 4 channels

    write_recipe("raises", source={"model": "failing.py:factory_raises"})
    write_recipe("imports", source={"model": "bad_import.py:tiny"})
    write_recipe("mismatch", source={"model": "failing.py:tiny", "kwargs": {"channels": 8}, "weights": "four.pt"})
    write_recipe("forward", source={"model": "failing.py:forward_raises"})
    failing = recipes / "failing.py"
    return {
        "raises": "\n".join([
            "raises:trace failed: ValueError: channels must be positive, got 0",
            "  in your code (most recent call last):",
            f'    File "recipes/failing.py", line {line_of(failing, "check_channels(channels)")}, in factory_raises',
            "      check_channels(channels)",
            f'    File "recipes/failing.py", line {line_of(failing, "raise ValueError")}, in check_channels',
            '      raise ValueError(f"channels must be positive, got {channels}")']),
        "imports": "\n".join([
            "imports:trace failed: ModuleNotFoundError: No module named 'not_a_module_anywhere'",
            "  in your code (most recent call last):",
            '    File "recipes/bad_import.py", line 2, in <module>',
            "      import not_a_module_anywhere"]),
        "mismatch": "mismatch:trace failed: RuntimeError: Error(s) in loading state_dict for TinyCnn:",
        "forward": "\n".join([
            "forward:trace failed: torch.jit.trace failed: RuntimeError: forward is broken",
            "  in your code (most recent call last):",
            f'    File "recipes/failing.py", line {line_of(failing, "return self.helper(x)")}, in forward',
            "      return self.helper(x)",
            f'    File "recipes/failing.py", line {line_of(failing, "raise RuntimeError")}, in helper',
            '      raise RuntimeError("forward is broken")']),
    }


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_user_code_failures_show_the_users_frames_not_bmbuilds(workspace, user_failures, run_bmbuild, jobs):
    code, out, err = run_bmbuild("run", "recipes", "--plain", "-j", jobs, "--keep-going")

    assert code == 1, out + err
    for name, shown in user_failures.items():
        assert read_report(name)["stages"]["trace"]["outcome"] == "failed", name
        assert shown in out, (name, out)
    assert "size mismatch for conv1.weight" in out
    # nothing of bmbuild's, doit's or torch's own code on the console
    assert "bmbuild/" not in out + err and "site-packages" not in out + err and "Traceback" not in out + err
    # the full traceback, bmbuild's frames included, is in each stage's log
    for name in user_failures:
        log = (workspace / "build" / name / "logs" / "trace.log").read_text()
        assert "Traceback (most recent call last):" in log, name
        assert re.search(r'File ".*bmbuild/(workers|stages/trace)\.py", line \d+', log), name
    # with the model's source lines and its real path
    log = (workspace / "build" / "raises" / "logs" / "trace.log").read_text()
    line = line_of(workspace / "recipes" / "failing.py", "check_channels(channels)")
    assert f'recipes/failing.py", line {line}, in factory_raises\n    check_channels(channels)\n' in log
