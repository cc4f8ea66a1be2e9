"""Steps as data (issue 9 item 2): every registered toolchain says, per stage, the steps it takes
(`Toolchain.steps`: Commands and in-process steps with plain-data arguments); one runner
(`bmbuild.steps.run_steps`) executes them, and `run --dry-run` prints the rendering of the very
same list. Also: what a toolchain implements is declared by the toolchain itself (item C)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bmbuild.commands import Command, paste_safe
from bmbuild.errors import ToolchainError
from bmbuild.stagecontext import StageContext
from bmbuild.stagelog import StageLog
from bmbuild.stages import all_stages
from bmbuild.steps import InProcess, render, resolve, run_steps
from bmbuild.toolchains.base import REGISTRY, optional_keys, toolchain_class
from conftest import read_report

TOOLCHAIN_STAGES = [stage.name for stage in all_stages() if stage.uses_toolchain]


@pytest.fixture
def int8_recipe(workspace, write_recipe) -> Any:
    """int8_recipe(toolchain, **overrides): the 2-conv net, INT8, batch sizes 1 and 2, with eval."""
    rng = np.random.default_rng(0)
    np.savez(workspace / "recipes" / "calib.npz", x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    np.savez(workspace / "recipes" / "eval.npz", x=rng.standard_normal((6, 3, 8, 8)).astype(np.float32),
             y=np.arange(6) % 10)

    def write(toolchain: str, **overrides: Any) -> Path:
        return write_recipe("tiny", toolchain=toolchain, prec="INT8", batch_sizes=[1, 2],
                            calibration={"data": "calib.npz", "key": "x", "samples": 8, "method": "kl"},
                            int8={"cmp_samples": 4}, eval={"data": "eval.npz", "max_drop": 100.0}, **overrides)

    return write


@pytest.fixture
def recorded_steps(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], list[Any]]:
    """(toolchain, stage) -> the steps its `steps()` returned last, for every registered toolchain."""
    seen: dict[tuple[str, str], list[Any]] = {}
    for name in REGISTRY:
        cls = toolchain_class(name)
        original = cls.steps

        def spy(self: Any, stage: str, ctx: StageContext, _original: Any = original, _name: str = name) -> list[Any]:
            steps = _original(self, stage, ctx)
            seen[(_name, stage)] = steps
            return steps

        monkeypatch.setattr(cls, "steps", spy)
    return seen


def plain(value: Any) -> Any:
    """`value` as JSON would hold it, paths as strings (raises TypeError on anything else)."""
    return json.loads(json.dumps(value, default=lambda v: str(v) if isinstance(v, Path) else _refuse(v)))


def _refuse(value: Any) -> Any:
    raise TypeError(f"not plain data: {value!r}")


# --- every registered toolchain x stage: plain data, and the dry run is their rendering ------------
@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_toolchain_gives_every_stage_as_plain_data_and_dry_run_prints_exactly_those_steps(
        name, workspace, int8_recipe, run_bmbuild, recorded_steps):
    recipe = int8_recipe(name, output_names=None)
    code, out, err = run_bmbuild("run", "--dry-run", "--json", recipe)
    assert code == 0, out + err
    printed = {step["stage"]: step["commands"] for step in json.loads(out)["steps"]}
    target = workspace / "build" / "tiny" / "trace" / "tiny.pt"   # the trace stage's own step, rendered alike
    assert printed["trace"] == [f"[in-process] torch.jit.trace(tiny_models.py:tiny_cnn()) on CPU in eval mode, "
                                f"traced == eager at batch sizes [1, 2] -> {target}; "
                                f"bmbuild.stages.trace:trace(target={target})"]
    for stage in TOOLCHAIN_STAGES:
        steps = recorded_steps[(name, stage)]
        assert steps and all(isinstance(step, (Command, InProcess)) for step in steps), steps
        assert printed[stage] == [render(step) for step in steps]          # the same list, rendered
        assert pickle.loads(pickle.dumps(steps)) == steps                     # plain data: survives a process
        for step in steps:
            if isinstance(step, InProcess):
                assert plain(step.args) is not None                          # JSON-able arguments
                assert callable(resolve(step)), step.function                 # names a real function
                assert step.line().startswith("[in-process] ") and step.function in step.line()
            else:
                assert plain([list(step.argv), str(step.cwd), step.env, [str(p) for p in step.outputs]])


def test_an_in_process_step_refuses_arguments_that_are_not_plain_data():
    with pytest.raises(ValueError, match="not plain data"):
        InProcess("bmbuild.toolchains.reference:optimise", {"model": object()})
    with pytest.raises(ValueError, match="module:function"):
        InProcess("optimise", {})
    assert InProcess("m:f", {"a": [1, 2.5, True, None, {"k": Path("/x")}]}).line() == \
        '[in-process] m:f(a=[1, 2.5, true, null, {"k": "/x"}])'


# --- the runner --------------------------------------------------------------------------------
def writes_nothing(ctx: StageContext, target: Path) -> None:
    """An in-process step that forgets its output."""


def writes_target(ctx: StageContext, target: Path) -> None:
    target.write_text("made\n")


def _ctx(tmp_path: Path) -> StageContext:
    return StageContext(None, {}, {}, tmp_path / "out", tmp_path / "work", StageLog(tmp_path / "logs" / "s.log"),
                        None)  # type: ignore[arg-type]  # the runner reads only log (and passes ctx on)


def test_the_runner_fails_naming_the_step_whose_declared_output_is_missing(tmp_path):
    ctx = _ctx(tmp_path)
    target = tmp_path / "made.txt"
    steps = [InProcess(f"{__name__}:writes_target", {"target": target}, (target,)),
             InProcess(f"{__name__}:writes_nothing", {"target": tmp_path / "lost.txt"}, (tmp_path / "lost.txt",),
                       says="make lost.txt")]
    with pytest.raises(ToolchainError) as caught:
        run_steps(ctx, steps, "title")
    message = str(caught.value)
    assert f"in-process step {__name__}:writes_nothing returned but did not write {tmp_path / 'lost.txt'}" in message
    assert "make lost.txt" in message and caught.value.exit_code == 1
    assert target.read_text() == "made\n"


def test_the_runner_fails_on_a_step_naming_no_function(tmp_path):
    with pytest.raises(ToolchainError, match="in-process step test_steps:no_such_function cannot be loaded"):
        run_steps(_ctx(tmp_path), [InProcess(f"{__name__}:no_such_function")], "title")


def test_a_stage_whose_step_does_not_write_its_output_fails(workspace, write_recipe, run_bmbuild, outcomes,
                                                            monkeypatch):
    import bmbuild.toolchains.reference as reference

    monkeypatch.setattr(reference, "export_onnx", lambda ctx, target: None)  # runs, writes nothing
    code, out, err = run_bmbuild("run", write_recipe("tiny"), "--plain")
    assert code == 1, out + err
    assert "in-process step bmbuild.toolchains.reference:export_onnx returned but did not write" in out + err
    assert "tiny.onnx" in out + err
    assert outcomes("tiny")["compile_fp32"] == "failed"


def test_the_cmd_file_holds_exactly_the_rendered_steps(workspace, int8_recipe, run_bmbuild, recorded_steps,
                                                       monkeypatch, tmp_path):
    from test_nntc_toolchain import DOUBLE, activate

    activate(monkeypatch, DOUBLE, tmp_path / "double.jsonl")
    code, out, err = run_bmbuild("run", int8_recipe("nntc"), "--plain")
    assert code == 0, out + err
    logs = workspace / "build" / "tiny" / "logs"
    for stage in TOOLCHAIN_STAGES:
        steps = recorded_steps[("nntc", stage)]
        lines = (logs / f"{stage}.cmd").read_text().splitlines() if (logs / f"{stage}.cmd").exists() else []
        if not any(isinstance(step, Command) for step in steps):
            assert lines == [], stage  # a stage that runs no command has no .cmd
            continue
        assert lines[0].startswith(f"# tiny {stage} (nntc): {len(steps)} step(s)")
        assert lines[1:] == [paste_safe(render(step)) for step in steps], stage
    # the in-process steps did their part: the bmodels' --info is in report.json
    assert sorted(read_report("tiny")["stages"]["compile_int8"]["metrics"]["bmodels"]) == ["1b", "2b", "combined"]


def test_a_reference_build_writes_no_cmd_file(workspace, write_recipe, run_bmbuild):
    assert run_bmbuild("run", write_recipe("tiny"), "--plain")[0] == 0
    assert not list((workspace / "build" / "tiny" / "logs").glob("*.cmd"))  # nothing to paste: all in Python


# --- item C: what a toolchain implements, it declares itself ---------------------------------------
class FakeToolchain:
    """A toolchain registered by a test: one class, one registry line."""

    name = "fake"
    consumes: dict[str, tuple[str, ...]] = {}
    optional_keys = frozenset({"output_names"})
    reshapes_batch = True

    def versions(self) -> dict[str, str]:
        return {"implementation": "1"}


def test_optional_keys_and_reshaping_come_from_the_toolchains_own_declarations(monkeypatch, workspace,
                                                                               write_recipe):
    from bmbuild.preflight import reshapes_batch, unsupported_keys
    from bmbuild.recipe import load_recipe

    assert optional_keys() == {"int8.asymmetric": ("reference", "tpu-mlir"),
                               "output_names": ("reference", "tpu-mlir", "tvm")}
    assert [name for name in REGISTRY if reshapes_batch(name)] == ["nntc", "tpu-mlir"]
    monkeypatch.setitem(REGISTRY, "fake", f"{__name__}:FakeToolchain")
    optional_keys.cache_clear()
    try:
        assert optional_keys()["output_names"] == ("reference", "tpu-mlir", "tvm", "fake")
        assert reshapes_batch("fake")
        loaded = load_recipe(write_recipe("cut", output_names=["/relu/Relu_output_0"]))
        (error,) = unsupported_keys(loaded, "nntc")
        assert "(implemented by reference, tpu-mlir, tvm, fake)" in str(error)
        assert unsupported_keys(loaded, "fake") == []
    finally:
        monkeypatch.delitem(REGISTRY, "fake")
        optional_keys.cache_clear()


def test_a_new_toolchain_without_golden_keys_is_reported_with_how_to_regenerate(monkeypatch, tmp_path):
    from test_key_golden import GOLDEN_FILE, components_of, fixture_recipe, golden_problems

    monkeypatch.setitem(REGISTRY, "fake", f"{__name__}:FakeToolchain")
    current = components_of(fixture_recipe(tmp_path))
    assert set(current["fake"]) == {stage.name for stage in all_stages()}
    assert golden_problems(current, json.loads(GOLDEN_FILE.read_text())) == [
        "toolchain 'fake' is registered but has no golden key components yet: regenerate them with "
        "BMBUILD_UPDATE_GOLDEN=1 python -m pytest tests/test_key_golden.py, review and commit "
        "tests/golden/key_components.json (tests/golden/README.md)"]


def test_refusing_an_optional_key_reads_the_declarations_without_heavy_imports(workspace, write_recipe):
    """Every toolchain module is read for its `optional_keys`: none may import numpy, torch or onnx."""
    from test_imports import WITH_NUMPY, _probe

    recipe = write_recipe("cut", toolchain="nntc", output_names=["/relu/Relu_output_0"])
    assert _probe(workspace, "validate", recipe, heavy=(*WITH_NUMPY, "tvm")) == {"code": 2, "heavy": []}
