"""One exit code rule (errors.py, README "Exit codes"): 2 when the input is wrong, before or during
a stage; 1 when a stage ran and failed; 3 for a bug; the highest wins when several stages fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bmbuild.engine import RunResult, failure_exit_code
from bmbuild.errors import DataError, RecipeError, StageFailed, ToolchainError, UserCodeError
from conftest import read_report

IMPOSSIBLE_FP32 = {"tolerance": {"sqnr": 500.0}}  # identical tensors measure at most 200 dB


def int8_recipe(write_recipe, workspace: Path, name: str, nan: bool = False, **overrides) -> Path:
    """An int8 recipe; with `nan`, its calibration data holds NaN: bad data only reading it finds
    (a wrong shape or too few samples are refused before any stage: tests/test_preflight.py)."""
    x = np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
    if nan:
        x[:, 0, 0, 0] = np.nan
    np.savez(workspace / "recipes" / f"{name}_calib.npz", x=x)
    return write_recipe(name, prec="INT8", calibration={"data": f"{name}_calib.npz", "key": "x", "samples": 8},
                        int8={"cmp_samples": 4}, **overrides)


def test_bad_calibration_data_found_by_the_calibrate_stage_exits_2(workspace, write_recipe, run_bmbuild):
    recipe = int8_recipe(write_recipe, workspace, "badcal", nan=True)

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 2, out + err
    stages = read_report("badcal")["stages"]
    assert stages["trace"]["outcome"] == "executed" and stages["calibrate"]["outcome"] == "failed"
    assert "badcal_calib.npz" in stages["calibrate"]["error"] and "NaN" in stages["calibrate"]["error"]
    assert not (workspace / "build" / "badcal" / "calibrate").exists()


def test_bad_evaluation_data_found_by_compile_int8_exits_2(workspace, write_recipe, run_bmbuild):
    rng = np.random.default_rng(1)
    path = workspace / "recipes" / "eval.npz"
    np.savez(path, x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32), y=np.arange(12) % 2)
    data = bytearray(path.read_bytes())  # a damaged byte amid x's values: its header reads, its CRC fails
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    recipe = int8_recipe(write_recipe, workspace, "badeval", eval={"data": "eval.npz"})

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 2, out + err
    stage = read_report("badeval")["stages"]["compile_int8"]
    assert stage["outcome"] == "failed" and "eval.npz" in stage["error"] and "cannot read array" in stage["error"]


def test_a_missing_weights_file_exits_2_before_any_stage(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("noweights", source={"weights": "missing.pt"})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 2, out + err
    assert "weights file not found" in err and "missing.pt" in err
    assert not (workspace / "build" / "noweights").exists()


def test_a_stage_that_ran_and_failed_exits_1(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("gate", fp32=IMPOSSIBLE_FP32)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1, out + err
    assert read_report("gate")["stages"]["compile_fp32"]["outcome"] == "failed"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_with_several_failures_the_highest_code_wins(workspace, write_recipe, run_bmbuild, jobs):
    write_recipe("a_gate", fp32=IMPOSSIBLE_FP32)                          # exit 1
    int8_recipe(write_recipe, workspace, "b_badcal", nan=True)  # exit 2
    write_recipe("c_good")

    code, out, err = run_bmbuild("run", "recipes", "--plain", "--keep-going", "-j", jobs)

    assert code == 2, out + err
    assert read_report("a_gate")["stages"]["compile_fp32"]["outcome"] == "failed"
    assert read_report("b_badcal")["stages"]["calibrate"]["outcome"] == "failed"
    assert read_report("c_good")["ok"] is True


def test_a_bug_in_a_stage_exits_3_over_user_errors(workspace, write_recipe, run_bmbuild, monkeypatch):
    from bmbuild.executor import Executor

    publish = Executor._publish

    def broken_publish(self, node, tmp, entry):
        if node.recipe_name == "b_bug":
            raise KeyError("a bug in bmbuild")
        return publish(self, node, tmp, entry)

    monkeypatch.setattr(Executor, "_publish", broken_publish)
    int8_recipe(write_recipe, workspace, "a_badcal", nan=True)
    write_recipe("b_bug")

    code, out, err = run_bmbuild("run", "recipes", "--plain", "--keep-going")

    assert code == 3, out + err
    assert read_report("a_badcal")["stages"]["calibrate"]["outcome"] == "failed"


def test_each_error_type_follows_the_rule():
    assert DataError("bad samples", "calib.npz").exit_code == 2
    assert RecipeError("bad key", "r.yaml", 3, "fp32.opt").exit_code == 2
    assert ToolchainError("toolchain 'nntc' is not usable here: bmnetu missing").exit_code == 2
    assert ToolchainError("bmnetu could not be started: No such file", "bmnetu -model=x").exit_code == 2
    assert ToolchainError("bmnetu failed", "bmnetu -model=x", 1, "error").exit_code == 1
    assert StageFailed("tolerance not met").exit_code == 1
    assert UserCodeError("ValueError: boom").exit_code == 1
    assert RunResult([], 0.0, 0).exit_code == 0
    assert RunResult([], 0.0, 1, exit_codes=[1, 2, 1]).exit_code == 2
    assert RunResult([], 0.0, 1, exit_codes=[2, 3]).exit_code == 3
    assert RunResult([], 0.0, 1).exit_code == 1


def test_doit_failures_map_to_exit_codes():
    from doit.exceptions import TaskError, TaskFailed

    failed = TaskFailed("x")
    failed.exit_code = 2
    assert failure_exit_code(failed) == 2
    assert failure_exit_code(TaskFailed("no code")) == 1
    assert failure_exit_code(TaskError("internal error")) == 3


def test_a_bug_raised_inside_a_stage_by_bmbuild_itself_exits_3_with_its_traceback(workspace, write_recipe,
                                                                                  run_bmbuild, monkeypatch):
    """An exception bmbuild's own code raises while a stage runs (no frame of the user's on its way)
    is a bug: exit 3 and bmbuild's traceback, not "the model's code raised" (exit 1)."""
    from bmbuild.stages import trace

    monkeypatch.setattr(trace, "fresh_class_registry", None)  # TypeError raised in stages/trace.py
    recipe = write_recipe("bug")

    code, out, err = run_bmbuild("run", recipe, "--plain", "-j", "1")

    assert code == 3, out + err
    error = read_report("bug")["stages"]["trace"]["error"]
    assert "internal error" in error and "stages/trace.py" in error and "TypeError" in error


def test_an_exception_from_the_models_code_stays_a_stage_failure(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("raises")
    model = workspace / "recipes" / "tiny_models.py"
    model.write_text(model.read_text().replace("        return self.conv2(self.extra(",
                                               "        raise ValueError('boom')\n        return self.conv2(self.extra(", 1))

    code, out, err = run_bmbuild("run", recipe, "--plain", "-j", "1")

    assert code == 1, out + err
    assert "ValueError: boom" in read_report("raises")["stages"]["trace"]["error"]
