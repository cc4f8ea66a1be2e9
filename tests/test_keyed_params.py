"""Keys hold only what can change the result (issue 9 item 3): each toolchain declares, per stage,
the parameters it reads beyond the common ones, and a calibration method declares its own.

The matrix tests the key parameters of every registered toolchain on plain values; the runs check
the two spurious rebuilds this removed (reference) and that NNTC, which reads those settings,
still rebuilds on them (its test double)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bmbuild.planner import keyed_params
from bmbuild.recipe import Recipe
from bmbuild.stages import all_stages
from bmbuild.toolchains.base import REGISTRY, load_toolchain
from conftest import deep_merge, plan_rows

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import OK_OUTCOMES, ws8  # noqa: E402,F401

RECIPE: dict[str, Any] = {
    "name": "m", "source": {"framework": "pytorch", "model": "m.py:net"}, "shapes": [[1, 3, 8, 8]],
    "prec": "INT8", "calibration": {"data": "calib.npz", "key": "x", "method": "kl"},
}


def stage_keys(toolchain: str, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """stage -> the parameters in its key, for RECIPE with `overrides` run by `toolchain`."""
    recipe = Recipe.model_validate(deep_merge({**RECIPE, "toolchain": toolchain}, overrides))
    consumes = load_toolchain(toolchain).consumes
    return {stage.name: keyed_params(stage, stage.params(recipe), consumes)
            for stage in all_stages() if stage.applies(recipe) and stage.uses_toolchain}


ALL = set(REGISTRY)
# (change, {toolchains whose keys change: the stages that change}); unlisted toolchains: none
CHANGES: list[tuple[str, dict[str, Any], dict[frozenset[str], set[str]]]] = [
    ("calibration.percentile, method kl", {"calibration": {"percentile": 99.0}}, {}),
    ("fp32.enable_profile", {"fp32": {"enable_profile": True}}, {frozenset({"nntc"}): {"compile_fp32"}}),
    ("int8.enable_profile", {"int8": {"enable_profile": True}}, {frozenset({"nntc"}): {"compile_int8"}}),
    ("calibration.bins, method kl", {"calibration": {"bins": 512}},
     {frozenset({"reference", "tpu-mlir", "tvm"}): {"calibrate"}}),
    ("fp32.opset", {"fp32": {"opset": 13}}, {frozenset({"reference", "tpu-mlir", "tvm"}): {"compile_fp32"}}),
    ("fp32.opt", {"fp32": {"opt": 2}}, {frozenset({"reference", "nntc", "tvm"}): {"compile_fp32"}}),
    ("fp32.cmp_samples", {"fp32": {"cmp_samples": 5}},
     {frozenset({"reference", "tpu-mlir", "tvm"}): {"compile_fp32"}}),
    ("int8.opt", {"int8": {"opt": 0}}, {frozenset({"reference", "nntc", "tvm"}): {"compile_int8"}}),
    ("int8.cmodel_samples", {"int8": {"cmodel_samples": 2}}, {frozenset({"tpu-mlir"}): {"compile_int8"}}),
    ("int8.per_channel", {"int8": {"per_channel": False}},
     {frozenset({"reference", "tvm"}): {"quantize"}, frozenset({"nntc"}): {"calibrate"}}),
    ("int8.fp32_layers", {"int8": {"fp32_layers": ["conv1"]}},
     {frozenset({"reference", "tvm", "tpu-mlir"}): {"quantize"}, frozenset({"nntc"}): {"calibrate", "quantize"}}),
    ("target", {"target": "BM1684X"},
     {frozenset({"nntc"}): {"compile_fp32", "compile_int8"},
      frozenset({"tpu-mlir"}): {"compile_fp32", "calibrate", "quantize", "compile_int8"},  # --part_asymmetric
      frozenset({"reference", "tvm"}): {"calibrate", "quantize"}}),  # BM1684X: asymmetric tensors at tpu-mlir's range
    ("tvm settings", {"tvm": {"latency_runs": 3}}, {frozenset({"tvm"}): {"compile_fp32", "compile_int8"}}),
    # common to every toolchain
    ("calibration.samples", {"calibration": {"samples": 50}}, {frozenset(ALL): {"calibrate", "compile_int8"}}),
    ("batch_sizes", {"batch_sizes": [1, 2]}, {frozenset(ALL): {"compile_fp32", "compile_int8"}}),
    ("calibration.method", {"calibration": {"method": "mse"}}, {frozenset(ALL): {"calibrate"}}),
]


@pytest.mark.parametrize("toolchain", sorted(REGISTRY))
@pytest.mark.parametrize("label, change, expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_reaches_exactly_the_keys_of_the_stages_that_read_it(toolchain, label, change, expected):
    before, after = stage_keys(toolchain, {}), stage_keys(toolchain, change)
    changed = {stage for stage in before if before[stage] != after[stage]}
    wanted = next((stages for names, stages in expected.items() if toolchain in names), set())
    assert changed == wanted, f"{label} on {toolchain}"


@pytest.mark.parametrize("toolchain", sorted(REGISTRY))
def test_percentile_is_keyed_only_for_method_percentile(toolchain):
    kl = stage_keys(toolchain, {"calibration": {"percentile": 99.0}})["calibrate"]
    assert "percentile" not in kl and kl["method"] == "kl"
    chosen = {"calibration": {"method": "percentile", "percentile": 99.0}}
    assert stage_keys(toolchain, chosen)["calibrate"]["percentile"] == 99.0


@pytest.mark.parametrize("toolchain", sorted(REGISTRY))
def test_declared_parameters_are_toolchain_specific_ones_of_known_stages(toolchain):
    """A name a toolchain declares but no stage has would silently key nothing (a typo)."""
    stages = {stage.name: stage for stage in all_stages()}
    for stage, names in load_toolchain(toolchain).consumes.items():
        assert stage in stages, stage
        assert set(names) <= stages[stage].toolchain_params, (stage, set(names) - stages[stage].toolchain_params)


# --- real runs --------------------------------------------------------------------------------
def test_reference_ignores_percentile_under_kl_and_nntc_only_settings(ws8):  # noqa: F811
    recipe = ws8.recipe(calibration={"method": "kl"})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    recipe = ws8.recipe(calibration={"method": "kl", "percentile": 99.0},
                        fp32={"enable_profile": True}, int8={"enable_profile": True})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert set(got.values()) == {"up-to-date"}, got
    assert "nothing to do" in out


def test_reference_reruns_calibration_when_the_chosen_methods_percentile_changes(ws8):  # noqa: F811
    recipe = ws8.recipe(calibration={"method": "percentile", "percentile": 99.99})
    assert ws8.build(recipe)[0] == 0
    recipe = ws8.recipe(calibration={"method": "percentile", "percentile": 99.0})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert got["trace"] == got["compile_fp32"] == "up-to-date"
    assert got["calibrate"] == "executed", got
    assert ws8.report()["stages"]["calibrate"]["reason"] == "parameter percentile: 99.99 -> 99.0"
    assert set(got.values()) <= set(OK_OUTCOMES)


def test_nntc_keys_what_its_commands_read(workspace, write_recipe, run_bmbuild, monkeypatch):
    """With the SDK double: a built NNTC recipe stays up to date when only the percentile of another
    method changes, and plans a new compile_fp32 for fp32.enable_profile (bmnetp reads it)."""
    import numpy as np

    from test_nntc_toolchain import DOUBLE, activate

    activate(monkeypatch, DOUBLE, workspace.parent / "double.jsonl")
    rng = np.random.default_rng(0)
    np.savez(workspace / "recipes" / "calib.npz", x=rng.standard_normal((20, 3, 8, 8)).astype(np.float32))
    base = {"toolchain": "nntc", "prec": "INT8",
            "calibration": {"data": "calib.npz", "key": "x", "samples": 8, "method": "kl"}, "int8": {"cmp_samples": 4}}
    recipe = write_recipe("tiny", **base)
    code, out, err = run_bmbuild("run", recipe)
    assert code == 0, out + err

    recipe = write_recipe("tiny", **deep_merge(base, {"calibration": {"percentile": 99.0}}))
    code, out, err = run_bmbuild("plan", recipe)
    assert code == 0, out + err
    assert {status for status, _ in plan_rows(out).values()} == {"up-to-date"}, out

    recipe = write_recipe("tiny", **deep_merge(base, {"fp32": {"enable_profile": True}}))
    code, out, err = run_bmbuild("plan", recipe)
    assert code == 0, out + err
    rows = plan_rows(out)
    assert rows["tiny:trace"][0] == "up-to-date"
    assert rows["tiny:compile_fp32"] == ("run", "parameter enable_profile: False -> True"), out
