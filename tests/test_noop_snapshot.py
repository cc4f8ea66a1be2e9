"""The workspace snapshot (bmbuild.snapshot): after a complete no-op, the next run/plan/status of the
same selection answers from stat calls alone, and is never trusted once anything it covers changed.

Each test builds a tiny recipe, lets a no-op run remember it, then changes one thing and checks
that the full check ran (the snapshot did not answer) and did the right work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from conftest import build_outputs, plan_rows, run_subprocess, subprocess_env

from bmbuild import project, snapshot

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per run/plan/status: True when the snapshot answered it."""
    got: list[bool] = []
    real = snapshot.lookup

    def spy(args: Any, cwd: Path | None = None) -> dict[str, Any] | None:
        entry = real(args, cwd)
        got.append(entry is not None)
        return entry

    monkeypatch.setattr(snapshot, "lookup", spy)
    return got


def settle() -> None:
    """File-system timestamps are coarse: a no-op remembers only entries older than its start."""
    time.sleep(3 * snapshot.MARGIN_NS / 1e9)


def snapshot_file(workspace: Path) -> Path:
    return workspace / ".bmbuild" / snapshot.FILE


def remembered(workspace: Path, run_bmbuild: Run, *args: Any) -> str:
    """Build `args`, then one no-op run that remembers it; returns that no-op's output."""
    code, out, err = run_bmbuild("run", *args, "--plain")
    assert code == 0, out + err
    settle()
    code, out, err = run_bmbuild("run", *args, "--plain")
    assert code == 0 and "nothing to do" in out, out + err
    assert snapshot_file(workspace).is_file()
    return out


def without_time(text: str) -> str:
    return "\n".join(line.rsplit(" (", 1)[0] if line.startswith("nothing to do") else line
                     for line in text.splitlines())


# --- the answer itself ------------------------------------------------------------------------------

def test_noop_plan_and_status_are_answered_with_the_same_output(workspace, write_recipe, run_bmbuild,
                                                                answered):
    recipes = workspace / "recipes"
    write_recipe("a")
    write_recipe("b", fp32={"opt": 2})
    slow_run = remembered(workspace, run_bmbuild, recipes)
    assert run_bmbuild("plan", recipes, "--force")[0] == 0  # --force is never answered
    del answered[:]

    code, fast_run, err = run_bmbuild("run", recipes, "--plain")
    assert code == 0, err
    assert without_time(fast_run) == without_time(slow_run)
    assert "nothing to do: 4 stage(s) up to date" in fast_run
    code, fast_plan, _ = run_bmbuild("plan", recipes)
    assert code == 0
    assert {k: v[0] for k, v in plan_rows(fast_plan).items()} == dict.fromkeys(
        ["a:trace", "a:compile_fp32", "b:trace", "b:compile_fp32"], "up-to-date")
    assert fast_plan.splitlines()[-1] == "0 of 4 stage(s) would run or be restored"
    code, fast_status, _ = run_bmbuild("status", recipes)
    assert code == 0
    assert answered == [True, True, True]
    assert "a:compile_fp32" in fast_status and "up-to-date" in fast_status and "cos=" in fast_status

    # the full plan and status print exactly the same
    os.utime(recipes / "a.yaml")  # a new ctime: the snapshot no longer answers
    assert run_bmbuild("plan", recipes)[1] == fast_plan
    assert run_bmbuild("status", recipes)[1] == fast_status
    assert answered[-2:] == [False, False]


PROBE = """
import runpy, sys
try:
    runpy.run_module("bmbuild", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("LOADED", sorted(m for m in ("pydantic", "doit", "yaml", "numpy", "torch") if m in sys.modules), code)
"""


def test_answered_noop_imports_neither_pydantic_nor_doit_nor_yaml(workspace, write_recipe):
    recipe = write_recipe("tiny")

    def probe() -> str:
        done = subprocess.run([sys.executable, "-c", PROBE, "run", str(recipe), "--plain"], cwd=workspace,
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
        return done.stdout + done.stderr

    assert "2 executed" in probe()
    settle()
    out = probe()  # the full no-op check, which remembers
    assert "nothing to do" in out and "'pydantic'" in out, out
    out = probe()
    assert "nothing to do: 2 stage(s) up to date" in out and "LOADED [] 0" in out, out


def test_another_selection_is_not_answered(workspace, write_recipe, run_bmbuild, answered):
    a = write_recipe("a")
    write_recipe("b")
    remembered(workspace, run_bmbuild, a)
    del answered[:]
    assert run_bmbuild("run", a, "--stage", "trace", "--plain")[0] == 0
    assert run_bmbuild("run", workspace / "recipes", "--plain")[0] == 0  # b is new: it is built
    assert answered == [False, False]
    assert json.loads((workspace / "build" / "b" / "report.json").read_text())["stages"]["trace"]["outcome"] \
        == "executed"


# --- never trusted when something changed -------------------------------------------------------------

def _edit_recipe(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(recipe.read_text())
    data["fp32"]["opt"] = 2
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))


def _new_default(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (recipe.parent / "defaults.yaml").write_text("description: from defaults\n")


def _edit_model(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = recipe.parent / "tiny_models.py"
    model.write_text(model.read_text() + "\n# edited\n")


def _new_local_module(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = recipe.parent / "tiny_models.py"
    (recipe.parent / "helper.py").write_text("SCALE = 1\n")
    model.write_text("import helper  # noqa\n" + model.read_text())


def _salt(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMBUILD_KEY_SALT", "another")


CHANGES: dict[str, tuple[Callable[[Path, pytest.MonkeyPatch], None], dict[str, str]]] = {
    "recipe edited": (_edit_recipe, {"trace": "up-to-date", "compile_fp32": "executed"}),
    "default added": (_new_default, {"trace": "up-to-date", "compile_fp32": "up-to-date"}),
    "model source edited": (_edit_model, {"trace": "executed", "compile_fp32": "executed"}),
    "model imports a new local module": (_new_local_module, {"trace": "executed", "compile_fp32": "executed"}),
    "key environment changed": (_salt, {"trace": "executed", "compile_fp32": "executed"}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_input_is_never_answered(change, workspace, write_recipe, run_bmbuild, outcomes, answered,
                                           monkeypatch):
    monkeypatch.delenv("BMBUILD_KEY_SALT", raising=False)
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    apply, expected = CHANGES[change]
    apply(recipe, monkeypatch)
    del answered[:]
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert answered == [False]
    assert outcomes("tiny") == expected


def test_any_key_environment_variable_is_followed(workspace, write_recipe, run_bmbuild, outcomes, answered,
                                                 monkeypatch):
    from bmbuild import executor

    monkeypatch.setattr(executor, "KEY_ENV", (*executor.KEY_ENV, "MY_TOOL_FLAGS"))
    monkeypatch.delenv("MY_TOOL_FLAGS", raising=False)
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    monkeypatch.setenv("MY_TOOL_FLAGS", "-O3")
    del answered[:]
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "executed"}


def test_touching_a_recipe_is_checked_in_full_and_runs_nothing(workspace, write_recipe, run_bmbuild, outcomes,
                                                               answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    os.utime(recipe)
    del answered[:]
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}


@pytest.mark.parametrize("damage", ["edited", "removed", "manifest removed"])
def test_a_changed_output_is_never_answered(damage, workspace, write_recipe, run_bmbuild, outcomes, answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    before = build_outputs(workspace, "tiny")
    folder = workspace / "build" / "tiny" / "compile_fp32"
    onnx = next(p for p in folder.iterdir() if p.suffix == ".onnx")
    if damage == "edited":
        onnx.chmod(0o644)
        onnx.write_bytes(onnx.read_bytes() + b"\0")
    elif damage == "removed":
        onnx.unlink()
    else:
        (folder / ".bmbuild-manifest.json").unlink()
    del answered[:]
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert build_outputs(workspace, "tiny") == before


def test_a_removed_report_is_written_again(workspace, write_recipe, run_bmbuild, outcomes, answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    (workspace / "build" / "tiny" / "report.json").unlink()
    del answered[:]
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}


@pytest.mark.parametrize("where", ["zoo", "zoo/new", "zoo/sub/empty"])
def test_a_new_recipe_in_a_scanned_folder_is_built(where, workspace, write_recipe, run_bmbuild, outcomes,
                                                   answered):
    recipes = workspace / "recipes"
    write_recipe("a", folder="recipes/zoo")
    (recipes / "zoo" / "sub" / "empty").mkdir(parents=True)  # no recipe below it yet
    remembered(workspace, run_bmbuild, recipes)
    write_recipe("b", folder=recipes / where)
    del answered[:]
    code, out, err = run_bmbuild("run", recipes, "--plain")
    assert code == 0, out + err
    assert answered == [False]
    assert outcomes("b") == {"trace": "executed", "compile_fp32": "executed"}


def test_a_yaml_file_that_becomes_a_recipe_is_built(workspace, write_recipe, run_bmbuild, outcomes, answered):
    recipes = workspace / "recipes"
    a = write_recipe("a")
    other = recipes / "ci.yaml"
    other.write_text("name: b\n")  # not a recipe: no source, and no defaults.yaml gives one
    remembered(workspace, run_bmbuild, recipes)
    folder = recipes.stat().st_mtime_ns
    other.write_text(a.read_text().replace("name: a", "name: b"))  # rewritten in place: now a recipe
    assert recipes.stat().st_mtime_ns == folder  # the folder says nothing new
    del answered[:]
    code, out, err = run_bmbuild("run", recipes, "--plain")
    assert code == 0, out + err
    assert answered == [False]
    assert outcomes("b") == {"trace": "executed", "compile_fp32": "executed"}


def test_a_removed_recipe_is_no_longer_listed(workspace, write_recipe, run_bmbuild, answered):
    recipes = workspace / "recipes"
    write_recipe("a")
    write_recipe("b")
    remembered(workspace, run_bmbuild, recipes)
    (recipes / "b.yaml").unlink()
    del answered[:]
    code, out, _ = run_bmbuild("run", recipes, "--plain")
    assert code == 0 and "nothing to do: 2 stage(s) up to date" in out and "b:trace" not in out
    assert answered == [False]


@pytest.mark.parametrize("option", ["--cache-dir", "--build-dir", "BMBUILD_CACHE_DIR", "bmbuild.yaml", "--toolchain"])
def test_other_folders_or_options_are_never_answered(option, workspace, write_recipe, run_bmbuild, outcomes,
                                                     answered, monkeypatch, tmp_path):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    extra: list[str] = []
    if option == "--cache-dir":
        extra = ["--cache-dir", str(tmp_path / "other-cache")]
    elif option == "--build-dir":
        extra = ["--build-dir", str(tmp_path / "other-build")]
    elif option == "BMBUILD_CACHE_DIR":
        monkeypatch.setenv("BMBUILD_CACHE_DIR", str(tmp_path / "other-cache"))
    elif option == "bmbuild.yaml":
        (workspace / "bmbuild.yaml").write_text("build_dir: out\n")
    else:
        extra = ["--toolchain", "reference"]
    del answered[:]
    code, out, err = run_bmbuild("run", recipe, "--plain", *extra)
    assert code == 0, out + err
    assert answered == [False]
    if option == "--build-dir":
        assert (tmp_path / "other-build" / "tiny" / "compile_fp32").is_dir()
    if option == "bmbuild.yaml":
        assert (workspace / "out" / "tiny" / "compile_fp32").is_dir()


def test_force_runs_and_forgets_the_snapshot(workspace, write_recipe, run_bmbuild, outcomes, answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    del answered[:]
    assert run_bmbuild("run", recipe, "--plain", "--force")[0] == 0
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "executed"}
    assert not snapshot_file(workspace).exists()


def test_a_failed_run_leaves_no_snapshot(workspace, write_recipe, run_bmbuild, outcomes, answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    good = recipe.read_text()
    write_recipe("tiny", fp32={"tolerance": {"cos": 1.0, "euclid": 1.0, "max_abs": 0.0}},
                 source={"kwargs": {"channels": 7}})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1, out + err
    assert not snapshot_file(workspace).exists()
    recipe.write_text(good)  # back as it was: the full check finds everything up to date again
    del answered[:]
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and answered == [False]
    # the failed compile never replaced the published one, which matches the restored trace again
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "up-to-date"}


def test_clean_forgets_the_snapshot(workspace, write_recipe, run_bmbuild, outcomes, answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    assert run_bmbuild("clean")[0] == 0
    assert not snapshot_file(workspace).exists()
    del answered[:]
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "restored"}


# --- never written when it could not be trusted --------------------------------------------------------

def test_entries_changed_after_the_run_started_are_not_remembered(workspace, write_recipe, run_bmbuild,
                                                                  monkeypatch):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    settle()
    # as if the recipe had been edited while the no-op was deciding: its ctime is after the start
    monkeypatch.setattr(snapshot, "clock", lambda cwd=None: time.time_ns() - 3600 * 10**9)
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out
    assert not snapshot_file(workspace).exists()


def test_scanning_the_workspace_root_is_not_remembered(workspace, write_recipe, run_bmbuild):
    write_recipe("tiny")
    assert run_bmbuild("run", workspace, "--plain")[0] == 0  # the scan holds build/ and .bmbuild/
    settle()
    code, out, _ = run_bmbuild("run", workspace, "--plain")
    assert code == 0 and "nothing to do" in out
    assert not snapshot_file(workspace).exists()


def test_only_the_reference_toolchain_is_remembered(workspace, write_recipe, run_bmbuild, monkeypatch):
    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    from bmbuild.workspace import Workspace

    build = project.prepare([str(recipe)], Workspace.at())
    args = type("Args", (), {"paths": [str(recipe)], "command": "run"})()
    build.toolchains = {name: "nntc" for name in build.toolchains}
    assert project.remember_noop(args, build, {"run": []}, time.time_ns()) is False


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 1, "selections": {"x": 1}}', b"[]"])
def test_a_damaged_snapshot_is_ignored(content, workspace, write_recipe, run_bmbuild, answered):
    recipe = write_recipe("tiny")
    remembered(workspace, run_bmbuild, recipe)
    data = json.loads(snapshot_file(workspace).read_text())
    if content.startswith(b'{"format"'):  # the right key, a malformed entry
        key = next(iter(data["selections"]))
        content = json.dumps({"format": 1, "selections": {key: {"stats": {}, "lines": {"run": [1]}}}}).encode()
    snapshot_file(workspace).write_bytes(content)
    del answered[:]
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out
    assert answered == [False]


def test_fresh_process_noop_is_answered(workspace, write_recipe):
    recipe = write_recipe("tiny")
    assert run_subprocess("run", recipe, "--plain", cwd=workspace).returncode == 0
    settle()
    slow = run_subprocess("run", recipe, "--plain", cwd=workspace)
    assert slow.returncode == 0 and snapshot_file(workspace).is_file()
    fast = run_subprocess("run", recipe, "--plain", cwd=workspace)
    assert fast.returncode == 0
    assert without_time(fast.stdout) == without_time(slow.stdout)
    shutil.rmtree(workspace / "build" / "tiny" / "trace")
    again = run_subprocess("run", recipe, "--plain", cwd=workspace)
    assert "restored" in again.stdout and "nothing to do" not in again.stdout


def test_corruption_found_by_status_verify_is_never_answered(workspace, write_recipe, run_bmbuild, outcomes,
                                                             answered):
    from test_state_faults import _fool_the_stat_cache, flip_byte_keeping_size_and_mtime

    recipe = write_recipe("tiny")
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    expected = build_outputs(workspace, "tiny")
    onnx = workspace / "build" / "tiny" / "compile_fp32" / "tiny.onnx"
    good = (workspace / "build" / "tiny" / "compile_fp32" / ".bmbuild-manifest.json").read_text()
    digest = json.loads(good)["outputs"]["tiny.onnx"]
    flip_byte_keeping_size_and_mtime(onnx, offset=10)
    _fool_the_stat_cache(workspace / ".bmbuild" / "stat.sqlite3", onnx, digest)  # bit rot stat cannot see
    settle()
    assert "nothing to do" in run_bmbuild("run", recipe, "--plain")[1]  # fooled too: remembered
    assert snapshot_file(workspace).is_file()

    assert run_bmbuild("status", recipe, "--verify")[0] == 1
    del answered[:]
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert answered == [False]
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert build_outputs(workspace, "tiny") == expected


def test_a_toolchain_that_auto_would_now_pick_is_never_answered(workspace, write_recipe, run_bmbuild, answered):
    from bmbuild.toolchains import tpu_mlir_env

    recipe = write_recipe("tiny", toolchain="auto")
    remembered(workspace, run_bmbuild, recipe)
    managed = tpu_mlir_env.managed_path()  # below $BMBUILD_TOOLCHAINS_DIR, a folder of this test
    managed.mkdir(parents=True)
    (managed / tpu_mlir_env.INFO_FILE).write_text(json.dumps({"tpu_mlir": "9.9.9"}))
    del answered[:]
    code, out, _ = run_bmbuild("plan", recipe)
    assert code == 0 and answered == [False]
    assert plan_rows(out)["tiny:compile_fp32"][0] == "run"  # auto picks tpu-mlir now
