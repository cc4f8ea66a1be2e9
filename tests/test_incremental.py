"""Incremental builds: nothing rebuilt that has not changed, everything restorable from the cache."""

from __future__ import annotations

import os
import sys
import shutil
from pathlib import Path


from conftest import build_outputs, plan_rows, read_report, sha256

STAGES = {"trace", "compile_fp32"}


def _first_build(write_recipe, run_bmbuild, outcomes, name="tiny", **overrides):
    recipe = write_recipe(name, **overrides)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes(name) == {"trace": "executed", "compile_fp32": "executed"}
    return recipe


def test_second_run_executes_nothing_and_says_so(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    before = build_outputs(workspace, "tiny")

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}
    assert "nothing to do: 2 stage(s) up to date" in out
    assert "running" not in out and "executed" not in out
    assert build_outputs(workspace, "tiny") == before


def test_touching_a_file_without_changing_it_executes_nothing(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    model = workspace / "recipes" / "tiny_models.py"
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns + 10**9, st.st_mtime_ns + 10**9))
    os.utime(recipe, ns=(st.st_atime_ns + 10**9, st.st_mtime_ns + 10**9))

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "up-to-date"}
    assert "nothing to do" in out


def test_changing_opt_reruns_compile_only_and_plan_says_why(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    trace_before = build_outputs(workspace, "tiny")
    write_recipe("tiny", fp32={"opt": 2})

    code, out, _ = run_bmbuild("plan", recipe)
    assert code == 0
    rows = plan_rows(out)
    assert rows["tiny:trace"][0] == "up-to-date"
    assert rows["tiny:compile_fp32"][0] == "run"
    assert "opt: 1 -> 2" in rows["tiny:compile_fp32"][1]
    assert "1 of 2 stage(s) would run" in out

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "executed"}
    report = read_report("tiny")
    assert "opt: 1 -> 2" in report["stages"]["compile_fp32"]["reason"]
    after = build_outputs(workspace, "tiny")
    assert after["trace/tiny.pt"] == trace_before["trace/tiny.pt"]


def test_changing_a_parameter_back_restores_from_cache(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    original = build_outputs(workspace, "tiny")
    write_recipe("tiny", fp32={"opt": 2})
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    assert outcomes("tiny")["compile_fp32"] == "executed"
    assert build_outputs(workspace, "tiny")["compile_fp32/.bmbuild-manifest.json"] \
        != original["compile_fp32/.bmbuild-manifest.json"]  # the opt-2 build replaced it

    write_recipe("tiny")  # back to opt 1
    code, out, _ = run_bmbuild("plan", recipe)
    rows = plan_rows(out)
    assert rows["tiny:compile_fp32"][0] == "cache hit" and "opt: 2 -> 1" in rows["tiny:compile_fp32"][1]
    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert "running" not in out
    assert "0 executed, 1 restored from cache" in out
    assert build_outputs(workspace, "tiny") == original


def test_deleting_build_restores_everything_byte_identical(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    original = build_outputs(workspace, "tiny")
    logs = {p.name: p.read_text() for p in (workspace / "build" / "tiny" / "logs").iterdir()}
    shutil.rmtree(workspace / "build")

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "restored"}
    assert "running" not in out
    assert build_outputs(workspace, "tiny") == original
    # the stage logs are replayed from the cache too
    assert {p.name: p.read_text() for p in (workspace / "build" / "tiny" / "logs").iterdir()} == logs


def test_fresh_clone_sharing_the_cache_restores_everything(workspace, tmp_path, monkeypatch, write_recipe,
                                                           run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    original = build_outputs(workspace, "tiny")

    clone = tmp_path / "clone"
    shutil.copytree(workspace / "recipes", clone / "recipes")
    monkeypatch.chdir(clone)
    code, out, err = run_bmbuild("run", Path("recipes") / recipe.name, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny", clone) == {"trace": "restored", "compile_fp32": "restored"}
    assert build_outputs(clone, "tiny") == original


def test_hand_edited_output_is_noticed_and_restored(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    onnx = workspace / "build" / "tiny" / "compile_fp32" / "tiny.onnx"
    original = sha256(onnx)
    with open(onnx, "ab") as handle:
        handle.write(b"hand edit")

    code, out, _ = run_bmbuild("plan", recipe)
    rows = plan_rows(out)
    assert rows["tiny:compile_fp32"] == ("cache hit", "output tiny.onnx was modified or removed")
    assert rows["tiny:trace"][0] == "up-to-date"

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "restored"}
    assert sha256(onnx) == original

    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert "nothing to do" in out


def test_removed_output_is_noticed_and_restored(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    traced = workspace / "build" / "tiny" / "trace" / "tiny.pt"
    original = sha256(traced)
    traced.unlink()

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "up-to-date"}
    assert sha256(traced) == original


def test_force_executes_everything(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)

    code, out, err = run_bmbuild("run", recipe, "--plain", "--force")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "executed"}
    assert "2 executed" in out


def test_changing_model_source_reruns_trace(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    model = workspace / "recipes" / "tiny_models.py"
    model.write_text(model.read_text() + "\n# an edit that changes nothing in the model\n")

    code, out, _ = run_bmbuild("plan", recipe)
    status, reason = plan_rows(out)["tiny:trace"]
    assert status == "run" and "input tiny_models.py changed" in reason

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny")["trace"] == "executed"
    # the traced model is the same, so compile_fp32 is up to date or restored, never recompiled
    assert outcomes("tiny")["compile_fp32"] in ("up-to-date", "restored", "executed")


def test_changing_kwargs_reruns_trace_and_compile(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    before = build_outputs(workspace, "tiny")
    write_recipe("tiny", source={"kwargs": {"channels": 6}})

    code, out, _ = run_bmbuild("plan", recipe)
    status, reason = plan_rows(out)["tiny:trace"]
    assert status == "run" and "kwargs" in reason

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "executed", "compile_fp32": "executed"}
    assert build_outputs(workspace, "tiny")["trace/tiny.pt"] != before["trace/tiny.pt"]

    write_recipe("tiny")  # kwargs back: both stages come from the cache
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "restored", "compile_fp32": "restored"}
    assert build_outputs(workspace, "tiny") == before


def test_parallel_jobs_build_two_recipes(workspace, write_recipe, run_bmbuild, outcomes):
    kwargs = {"a": {"depth": 30}, "b": {"depth": 30, "channels": 5}}
    for name in ("a", "b"):
        write_recipe(f"tiny_{name}", source={"kwargs": kwargs[name]})

    code, out, err = run_bmbuild("run", workspace / "recipes", "--plain", "-j", "2")
    assert code == 0, out + err
    assert "4 executed" in out

    # with both traces up to date, the two compile_fp32 stages start together: run them so twice
    for opt in (2, 0):
        for name in ("a", "b"):
            write_recipe(f"tiny_{name}", source={"kwargs": kwargs[name]}, fp32={"opt": opt})
        code, out, err = run_bmbuild("run", workspace / "recipes", "--plain", "-j", "2")

        assert code == 0, out + err
        assert "2 executed" in out
        for name in ("tiny_a", "tiny_b"):
            assert outcomes(name) == {"trace": "up-to-date", "compile_fp32": "executed"}
            files = build_outputs(workspace, name)
            assert {f"trace/{name}.pt", f"compile_fp32/{name}.onnx", f"compile_fp32/{name}.fp32.onnx"} <= set(files)
            assert read_report(name)["ok"] is True

    code, out, _ = run_bmbuild("run", workspace / "recipes", "--plain", "-j", "2")
    assert code == 0 and "nothing to do: 4 stage(s) up to date" in out


def test_parallel_jobs_trace_only(workspace, write_recipe, run_bmbuild, outcomes):
    """-j 2 over two recipes' trace stages (no ONNX export involved) builds both."""
    write_recipe("tiny_a")
    write_recipe("tiny_b", source={"kwargs": {"channels": 5}})

    code, out, err = run_bmbuild("run", workspace / "recipes", "--plain", "-j", "2", "--stage", "trace")

    assert code == 0, out + err
    for name in ("tiny_a", "tiny_b"):
        assert outcomes(name) == {"trace": "executed"}
        assert (workspace / "build" / name / "trace" / f"{name}.pt").is_file()


def test_stage_selection_builds_only_that_stage(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny")

    code, out, err = run_bmbuild("run", recipe, "--plain", "--stage", "trace")

    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "executed"}
    assert (workspace / "build" / "tiny" / "trace" / "tiny.pt").is_file()
    assert not (workspace / "build" / "tiny" / "compile_fp32").exists()

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "executed"}


def test_unknown_stage_is_a_user_error(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("tiny")
    code, out, err = run_bmbuild("run", recipe, "--plain", "--stage", "tarce")
    assert code == 2
    assert "unknown stage 'tarce'" in err and "Traceback" not in out + err


def test_model_edit_is_traced_even_when_bytecode_cache_looks_current(workspace, write_recipe, run_bmbuild,
                                                                      outcomes, monkeypatch):
    """Regression: the model file used to be imported through __pycache__, whose staleness check
    (whole-second mtime, size) missed a same-size edit: trace re-ran on the old code."""
    import torch

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on a user's machine
    recipe = _first_build(write_recipe, run_bmbuild, outcomes)
    traced = workspace / "build" / "tiny" / "trace" / "tiny.pt"
    x = torch.ones(1, 3, 8, 8)
    first = torch.jit.load(str(traced))(x).detach()

    model = workspace / "recipes" / "tiny_models.py"
    st = model.stat()
    text = model.read_text()
    assert "SCALE = 1.0" in text
    model.write_text(text.replace("SCALE = 1.0", "SCALE = 2.0"))  # same size
    # same whole second as before (as after a quick edit or a checkout): only the ns part differs
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1))

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("tiny")["trace"] == "executed"
    second = torch.jit.load(str(traced))(x).detach()
    assert torch.allclose(second, 2 * first), "the trace stage ran the stale bytecode of the old model file"


HELPER_MODEL = """\
import torch
from torch import nn

from {helper} import CHANNELS


def net():
    torch.manual_seed(0)
    return nn.Conv2d(3, CHANNELS, 3, padding=1)
"""


def _out_channels(traced: Path) -> int:
    import torch

    return int(torch.jit.load(str(traced))(torch.zeros(1, 3, 8, 8)).shape[1])


def test_editing_a_module_the_model_file_imports_reruns_trace(workspace, write_recipe, run_bmbuild, outcomes):
    recipes = workspace / "recipes"
    (recipes / "tiny_helpers.py").write_text("CHANNELS = 4\n")
    (recipes / "helper_model.py").write_text(HELPER_MODEL.format(helper="tiny_helpers"))
    recipe = write_recipe("helped", source={"model": "helper_model.py:net"})
    try:
        code, out, err = run_bmbuild("run", recipe, "--plain")
        assert code == 0, out + err
        assert _out_channels(workspace / "build" / "helped" / "trace" / "helped.pt") == 4

        (recipes / "tiny_helpers.py").write_text("CHANNELS = 6\n")
        sys.modules.pop("tiny_helpers", None)  # as in a new process: this test is about the key only
        code, out, err = run_bmbuild("run", recipe, "--plain")

        assert code == 0, out + err
        assert outcomes("helped")["trace"] == "executed"
        assert _out_channels(workspace / "build" / "helped" / "trace" / "helped.pt") == 6
    finally:
        sys.modules.pop("tiny_helpers", None)


def test_two_recipe_folders_with_same_named_helper_modules(workspace, write_recipe, run_bmbuild, outcomes):
    """A model zoo: every model folder has its own `layers.py`; one bmbuild process builds them all."""
    for folder, channels in (("zoo/a", 4), ("zoo/b", 6)):
        path = workspace / folder
        path.mkdir(parents=True)
        (path / "zoo_layers.py").write_text(f"CHANNELS = {channels}\n")
        (path / "net.py").write_text(HELPER_MODEL.format(helper="zoo_layers"))
        write_recipe(f"zoo_{channels}", folder=folder, source={"model": "net.py:net"})

    try:
        code, out, err = run_bmbuild("run", workspace / "zoo", "--plain")
    finally:
        sys.modules.pop("zoo_layers", None)

    assert code == 0, out + err
    assert _out_channels(workspace / "build" / "zoo_4" / "trace" / "zoo_4.pt") == 4
    assert _out_channels(workspace / "build" / "zoo_6" / "trace" / "zoo_6.pt") == 6, \
        "zoo/b/net.py got zoo/a/zoo_layers.py from sys.modules"
