"""A killed build leaves nothing that looks complete; two runs on one workspace do not collide.

These need real processes: the build is started with `python -m bmbuild`, in its own session
so the whole process group can be SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import bmbuild_command, build_outputs, plan_rows, subprocess_env

MANIFEST = ".bmbuild-manifest.json"


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _start(workspace: Path, recipe: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = workspace.parent / f"{name}.out", workspace.parent / f"{name}.err"
    proc = subprocess.Popen(bmbuild_command("run", recipe, "--plain"), cwd=workspace, env=subprocess_env(),
                            stdout=open(out, "w"), stderr=open(err, "w"), start_new_session=True)
    return proc, out, err


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_sigkill_mid_stage_leaves_nothing_complete(workspace, write_recipe, outcomes, run_bmbuild):
    marker, release = workspace.parent / "started", workspace.parent / "release"
    recipe = write_recipe("tiny", source={"kwargs": {"marker": str(marker), "wait_for": str(release)}})
    proc, _, _ = _start(workspace, recipe, "killed")
    try:
        _wait_for(marker.exists, 60, "the trace stage to start", proc)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL

    build = workspace / "build" / "tiny"
    # whatever the killed run left, nothing carries a manifest: nothing looks complete
    assert not (build / "trace" / MANIFEST).exists()
    assert not (build / "compile_fp32" / MANIFEST).exists()
    assert not list(workspace.glob(f"build/**/{MANIFEST}"))

    code, out, err = run_bmbuild("plan", recipe)
    assert code == 0, err
    rows = plan_rows(out)
    assert rows["tiny:trace"] == ("run", "no output yet")
    assert rows["tiny:compile_fp32"][0] == "after upstream"
    assert "2 of 2 stage(s) would run" in out

    release.write_text("go")  # the next run does not wait (same kwargs, same key)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "executed"}
    files = build_outputs(workspace, "tiny")
    assert {"trace/tiny.pt", f"trace/{MANIFEST}", "compile_fp32/tiny.onnx", f"compile_fp32/{MANIFEST}"} <= set(files)
    assert not (build / ".tmp").exists() or not any((build / ".tmp").iterdir())

    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out


def test_sigkill_in_downstream_stage_keeps_upstream(workspace, write_recipe, outcomes, run_bmbuild):
    """Killed during compile_fp32 (after trace was published): trace stays valid, compile reruns."""
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain", "--stage", "trace")
    assert code == 0, out + err
    trace_files = build_outputs(workspace, "tiny")

    # make compile_fp32 slow to start: a huge cmp_samples keeps it busy comparing
    write_recipe("tiny", fp32={"cmp_samples": 100000})
    proc, out, _ = _start(workspace, recipe, "killed")
    try:
        _wait_for(lambda: "running    tiny:compile_fp32" in out.read_text(), 60, "compile_fp32 to start", proc)
        time.sleep(0.5)
    finally:
        _kill_group(proc)
    assert not (workspace / "build" / "tiny" / "compile_fp32" / MANIFEST).exists()
    assert build_outputs(workspace, "tiny") == trace_files

    write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "executed"}


def test_second_run_waits_for_the_workspace_lock(workspace, write_recipe, run_bmbuild):
    marker, release = workspace.parent / "started", workspace.parent / "release"
    recipe = write_recipe("tiny", source={"kwargs": {"marker": str(marker), "wait_for": str(release)}})
    first, first_out, first_err = _start(workspace, recipe, "first")
    second = None
    try:
        _wait_for(marker.exists, 60, "the first run's trace stage to start", first)
        second, second_out, second_err = _start(workspace, recipe, "second")
        _wait_for(lambda: "waiting for another bmbuild" in second_err.read_text(), 60,
                  "the second run to wait for the lock", second)
        assert second.poll() is None  # still waiting while the first holds the lock
        release.write_text("go")
        assert first.wait(timeout=120) == 0, first_out.read_text() + first_err.read_text()
        assert second.wait(timeout=120) == 0, second_out.read_text() + second_err.read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                _kill_group(proc)

    assert "2 executed" in first_out.read_text()
    # the second run found the first one's outputs complete
    assert "nothing to do: 2 stage(s) up to date" in second_out.read_text()
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out
    files = build_outputs(workspace, "tiny")
    assert {"trace/tiny.pt", "compile_fp32/tiny.onnx", "compile_fp32/tiny.fp32.onnx"} <= set(files)


def test_two_workspaces_sharing_one_cache_build_concurrently(workspace, write_recipe, tmp_path):
    """Two clones (say two CI jobs on one machine) write the same objects and entries at once."""
    import shutil

    for name in ("c1", "c2", "c3"):
        write_recipe(name)
    other = tmp_path / "other"
    shutil.copytree(workspace / "recipes", other / "recipes")
    procs = [_start(root, root / "recipes", f"run{index}") for index, root in enumerate((workspace, other))]
    for proc, out, err in procs:
        assert proc.wait(timeout=180) == 0, out.read_text() + err.read_text()
    for name in ("c1", "c2", "c3"):
        assert build_outputs(workspace, name) == build_outputs(other, name)
    # the shared cache holds complete, verified entries: a third clone restores everything
    third = tmp_path / "third"
    shutil.copytree(workspace / "recipes", third / "recipes")
    proc, out, err = _start(third, third / "recipes", "run3")
    assert proc.wait(timeout=180) == 0, out.read_text() + err.read_text()
    assert "0 executed, 6 restored from cache" in out.read_text()
