"""The contract every registered toolchain keeps (issue 9 item 5), one driver for all of them, as
pre-commit's shared language tests do: with none of its packages importable it says why it is not
usable, `run --dry-run` still renders every stage (for every calibration method), and `versions()`
is cheap (no heavy import, no subprocess beyond a first, remembered one).

A new toolchain is one module and one registry line; this file then tests it too."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from bmbuild.calib.registry import METHOD_NAMES
from bmbuild.stages import all_stages
from bmbuild.toolchains.base import REGISTRY, load_toolchain

# What no toolchain may need to plan, describe or version itself (the SDK's modules are absent anyway).
HEAVY = ("torch", "onnx", "onnxruntime", "tvm", "tpu_mlir", "bmnetp", "bmnetu", "ufw")
STAGES = [stage.name for stage in all_stages()]


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every heavy package unimportable and invisible to find_spec (a None in sys.modules)."""
    for name in HEAVY:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def int8_recipe(workspace, write_recipe) -> Any:
    rng = np.random.default_rng(0)
    np.savez(workspace / "recipes" / "calib.npz", x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))

    def write(toolchain: str, method: str = "kl") -> Any:
        return write_recipe("tiny", toolchain=toolchain, prec="INT8", batch_sizes=[1, 2],
                            calibration={"data": "calib.npz", "key": "x", "samples": 8, "method": method},
                            int8={"cmp_samples": 4})

    return write


@pytest.mark.parametrize("name", list(REGISTRY))
def test_an_unusable_toolchain_says_why(name, nothing_installed):
    status = load_toolchain(name).availability()
    assert status.usable is False and status.reason.strip(), status
    assert isinstance(status.version, str)


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_dry_run_renders_every_stage_without_the_toolchain(name, method, int8_recipe, run_bmbuild,
                                                           nothing_installed):
    recipe = int8_recipe(name, method)
    code, out, err = run_bmbuild("run", "--dry-run", "--json", recipe)
    assert code == 0, out + err
    steps = json.loads(out)["steps"]
    assert [step["stage"] for step in steps] == STAGES
    for step in steps:
        assert step["error"] is None and step["commands"], step
        assert all(isinstance(line, str) and line.strip() for line in step["commands"]), step


@pytest.mark.parametrize("name", list(REGISTRY))
def test_versions_are_cheap_and_stable(name, nothing_installed, monkeypatch):
    toolchain = load_toolchain(name)
    first = toolchain.versions()
    assert first and all(isinstance(k, str) and isinstance(v, str) for k, v in first.items())

    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name}.versions() started a process again: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    assert toolchain.versions() == first
    assert toolchain.versions() == first


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_toolchain_declares_what_it_reads(name):
    """`consumes` names stages a toolchain does (its keys hold exactly those parameters)."""
    toolchain = load_toolchain(name)
    assert toolchain.name == name
    assert set(toolchain.consumes) <= set(STAGES) and set(toolchain.consumes), toolchain.consumes


# --- the calibration method registry ----------------------------------------------------------
def test_every_registered_method_has_a_threshold_function_and_its_settings_exist():
    from bmbuild.calib.config import CalibrationConfig
    from bmbuild.calib.methods import THRESHOLDS
    from bmbuild.calib.registry import METHODS

    assert set(THRESHOLDS) == set(METHOD_NAMES)
    for method in METHODS.values():
        assert set(method.params) <= set(CalibrationConfig.model_fields), method


def test_recipe_validation_and_schema_follow_the_method_registry(monkeypatch):
    from pydantic import ValidationError

    from bmbuild.calib.config import CalibrationConfig
    from bmbuild.schemas import recipe_schema

    text = json.dumps(recipe_schema())
    assert all(f'"{name}"' in text for name in METHOD_NAMES)
    with pytest.raises(ValidationError) as caught:
        CalibrationConfig.model_validate({"data": "x.npz", "method": "entropy"})
    assert all(repr(name) in str(caught.value) for name in METHOD_NAMES)


# --- auto, per recipe --------------------------------------------------------------------------
def test_plan_and_run_say_which_toolchain_auto_picked_for_each_recipe(workspace, write_recipe, run_bmbuild,
                                                                     monkeypatch):
    write_recipe("a", toolchain="auto")
    write_recipe("r")
    write_recipe("x", toolchain="auto", target="BM1684X")
    code, out, err = run_bmbuild("plan", "recipes")
    assert code == 0, out + err
    lines = out.splitlines()
    assert "toolchain reference (auto for BM1684: nntc not usable here, tpu-mlir not usable here): a" in lines
    assert "toolchain reference: r" in lines
    assert "toolchain reference (auto for BM1684X: tpu-mlir not usable here): x" in lines
    code, out, err = run_bmbuild("plan", "recipes", "--json")
    assert json.loads(out)["toolchains"] == [
        {"recipe": "a", "toolchain": "reference", "chosen_by": "auto for BM1684: nntc not usable here, "
                                                               "tpu-mlir not usable here"},
        {"recipe": "r", "toolchain": "reference", "chosen_by": None},
        {"recipe": "x", "toolchain": "reference", "chosen_by": "auto for BM1684X: tpu-mlir not usable here"}]

    from test_nntc_toolchain import DOUBLE, activate

    activate(monkeypatch, DOUBLE, workspace.parent / "double.jsonl")  # the SDK (its double) is installed
    code, out, err = run_bmbuild("plan", "recipes")
    assert code == 0, out + err
    assert "toolchain nntc (auto for BM1684): a" in out.splitlines()
    code, out, err = run_bmbuild("run", "recipes/r.yaml")
    assert code == 0, out + err
    assert "toolchain reference: r" in out.splitlines()
