"""The int8 stages through the CLI on a tiny classifier: the calibration table, what re-runs when
calibration or int8 settings change, fp32_layers, the failing-gate diagnosis, evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import OK_OUTCOMES, Int8Workspace, write_npz, ws8  # noqa: E402,F401

from bmbuild.calib.table import read_table  # noqa: E402

INT8_STAGES = ("calibrate", "quantize", "compile_int8")


def table_path(ws: Int8Workspace, name: str = "tiny8") -> Path:
    return ws.stage_dir("calibrate", name) / f"{name}_cali_table"


def float_tensor_names(ws: Int8Workspace, name: str = "tiny8") -> list[str]:
    import onnx

    from bmbuild.toolchains.reference_int8 import float_tensors

    return float_tensors(onnx.load(str(ws.stage_dir("compile_fp32", name) / f"{name}.onnx")))


# --- the calibration table, written by a real calibrate run -------------------------------------

def test_minmax_table_round_trip_and_identical_bytes_with_force(ws8: Int8Workspace) -> None:
    recipe = ws8.recipe(calibration={"method": "minmax"})
    code, out, err = ws8.build(recipe, "--stage", "calibrate")
    assert code == 0, out + err
    text = table_path(ws8).read_bytes()
    rows = read_table(table_path(ws8))
    # one row per float tensor (graph input and output included), in graph order
    assert list(rows) == float_tensor_names(ws8)
    assert list(rows)[0] == "input" and "output" in rows and len(rows) == 10
    for name, (threshold, low, high) in rows.items():
        assert threshold == max(abs(low), abs(high)), name
        assert low <= high
    stats = (ws8.stage_dir("calibrate") / "tiny8_cali_stats.json").read_bytes()
    summary = json.loads(stats)
    assert set(summary) == set(rows)
    # every element of every calibration sample is counted once (the input used to count twice)
    assert summary["input"]["count"] == 16 * 3 * 16 * 16
    assert summary["/conv1/Conv_output_0"]["count"] == 16 * 8 * 16 * 16
    assert summary["output"]["count"] == 16 * 10
    for name, (threshold, low, high) in rows.items():
        assert (summary[name]["min"], summary[name]["max"]) == (low, high)
    metrics = ws8.metrics("calibrate")
    assert metrics == {"method": "minmax", "samples": 16, "tensors": len(rows)}

    code, out, err = ws8.build(recipe, "--stage", "calibrate", "--force")
    assert code == 0, out + err
    assert ws8.outcomes()["calibrate"] == "executed"
    assert table_path(ws8).read_bytes() == text
    assert (ws8.stage_dir("calibrate") / "tiny8_cali_stats.json").read_bytes() == stats


def test_every_method_writes_a_valid_table(ws8: Int8Workspace) -> None:
    tables = {}
    for method in ("minmax", "percentile", "kl", "mse"):
        recipe = ws8.recipe(calibration={"method": method, "percentile": 99.0})
        code, out, err = ws8.build(recipe, "--stage", "calibrate")
        assert code == 0, out + err
        assert ws8.outcomes()["calibrate"] == "executed"
        head = table_path(ws8).read_text().splitlines()[:4]
        assert f"# method: {method}" in head
        tables[method] = read_table(table_path(ws8))
    names = list(tables["minmax"])
    for method, rows in tables.items():
        assert list(rows) == names, method
        for name, (threshold, low, high) in rows.items():
            assert 0 < threshold <= max(abs(low), abs(high)) * (1 + 1e-12), (method, name)
            assert (low, high) == tables["minmax"][name][1:]
    # a 99th percentile clips something on every non-constant tensor
    assert all(tables["percentile"][n][0] < tables["minmax"][n][0] for n in names)


# --- what re-runs ----------------------------------------------------------------------------------

def test_changing_method_reruns_int8_stages_only_and_changing_back_restores(ws8: Int8Workspace) -> None:
    recipe = ws8.recipe(calibration={"method": "minmax"})
    assert ws8.build(recipe)[0] == 0
    first = table_path(ws8).read_bytes()

    # (not kl: checked against no clipping, on this small model it keeps minmax's thresholds,
    # and quantize then makes the same model, so compile_int8 is rightly up to date)
    recipe = ws8.recipe(calibration={"method": "percentile"})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert got["trace"] == got["compile_fp32"] == "up-to-date"
    assert all(got[s] == "executed" for s in INT8_STAGES), got
    assert ws8.report()["stages"]["calibrate"]["reason"] == "parameter method: 'minmax' -> 'percentile'"
    assert table_path(ws8).read_bytes() != first

    recipe = ws8.recipe(calibration={"method": "minmax"})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert got["trace"] == got["compile_fp32"] == "up-to-date"
    assert all(got[s] == "restored" for s in INT8_STAGES), got
    assert table_path(ws8).read_bytes() == first


def test_changing_only_gates_reruns_nothing(ws8: Int8Workspace) -> None:
    write_npz(ws8.recipes / "data" / "eval.npz", 12, seed=5, y=np.arange(12) % 10)
    evaluation = {"data": "data/eval.npz", "max_drop": 50.0}
    recipe = ws8.recipe(eval=evaluation)
    assert ws8.build(recipe)[0] == 0

    recipe = ws8.recipe(eval={**evaluation, "max_drop": 40.0},
                        int8={"tolerance": {"cos": 0.5, "euclid": 0.1, "sqnr": 10.0}})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert "executed" not in got.values() and set(got.values()) <= set(OK_OUTCOMES), got
    assert "nothing to do" in out


# --- fp32_layers -------------------------------------------------------------------------------------

def test_fp32_layers_by_node_name_and_by_output_name_stay_float(ws8: Int8Workspace) -> None:
    import onnx

    # names of the eager export: the ReLU module called after conv2 is /relu_1
    recipe = ws8.recipe(int8={"fp32_layers": ["/conv2/Conv", "/relu_1/Relu_output_0"]})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    model = onnx.load(str(ws8.stage_dir("quantize") / "tiny8.int8.onnx"))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    nodes = {n.name: n for n in model.graph.node}
    initializers = {i.name for i in model.graph.initializer}

    conv2 = nodes["/conv2/Conv"]
    assert conv2.input[1] in initializers and conv2.input[2] in initializers  # float weights, bias
    relu = nodes["/relu_1/Relu"]  # named through its output tensor
    assert producer[relu.input[0]] == "Conv"  # reads conv2's float output directly
    assert consumers[conv2.output[0]] == ["Relu"]  # conv2's output is never quantized
    # the other convolutions are int8 (dequantized weights)
    for name in ("/conv1/Conv", "/conv3/Conv"):
        assert producer[nodes[name].input[1]] == "DequantizeLinear"
    assert ws8.metrics("quantize")["fp32_layers"] == ["/conv2/Conv", "/relu_1/Relu"]


def test_unknown_fp32_layer_fails_with_close_names(ws8: Int8Workspace) -> None:
    recipe = ws8.recipe(int8={"fp32_layers": ["/conv2/Conv_out"]})
    code, out, err = ws8.build(recipe)
    text = out + err
    assert code == 1
    assert "no layer named '/conv2/Conv_out'" in text and "did you mean" in text
    assert "/conv2/Conv_output_0" in text and "Traceback" not in text
    got = ws8.outcomes()
    assert got["quantize"] == "failed" and got["compile_int8"] == "blocked"


def test_unknown_fp32_layer_given_as_module_name_gets_suggestions(ws8: Int8Workspace) -> None:
    recipe = ws8.recipe(int8={"fp32_layers": ["conv2"]})  # the PyTorch module's name
    code, out, err = ws8.build(recipe)
    assert code == 1
    assert "no layer named 'conv2'" in out + err and "/conv2/Conv" in out + err


# --- the gate and its diagnosis ----------------------------------------------------------------------

def test_impossible_tolerance_names_five_layers_as_fp32_candidates(ws8: Int8Workspace) -> None:
    recipe = ws8.recipe(int8={"tolerance": {"sqnr": 200}})
    code, out, err = ws8.build(recipe)
    text = out + err
    assert code == 1
    assert ws8.outcomes()["compile_int8"] == "failed"
    assert "SQNR" in text and "< 200" in text
    assert "candidates for int8.fp32_layers" in text
    lines = [ln for ln in text.splitlines() if "(op " in ln and "cos=" in ln and "sqnr=" in ln]
    assert len(lines) == 5, text
    tensors = set(float_tensor_names(ws8))
    assert all(line.split()[0] in tensors for line in lines)  # each names a real fp32 tensor
    assert "Traceback" not in text


def test_relaxing_the_tolerance_again_restores_without_running(ws8: Int8Workspace) -> None:
    recipe = ws8.recipe(int8={"tolerance": {"sqnr": 200}})
    assert ws8.build(recipe)[0] == 1
    recipe = ws8.recipe()
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert "executed" not in got.values(), got


# --- evaluation ----------------------------------------------------------------------------------------

def test_eval_reports_fp32_and_int8_accuracy(ws8: Int8Workspace) -> None:
    write_npz(ws8.recipes / "data" / "eval.npz", 20, seed=9, y=np.arange(20) % 10)
    recipe = ws8.recipe(eval={"data": "data/eval.npz", "max_drop": 100.0})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    evaluation = ws8.metrics("compile_int8")["eval"]
    assert evaluation["metric"] == "top1" and evaluation["samples"] == 20
    assert 0.0 <= evaluation["fp32"] <= 1.0 and 0.0 <= evaluation["int8"] <= 1.0
    assert evaluation["drop_points"] == pytest.approx(100 * (evaluation["fp32"] - evaluation["int8"]))
    assert "top1 fp32" in out


def test_int8_accuracy_drop_beyond_max_drop_fails(ws8: Int8Workspace) -> None:
    # the tied classifier: fp32 always picks class 1, int8 cannot separate 0 from 1
    write_npz(ws8.recipes / "data" / "eval.npz", 16, seed=4, y=np.ones(16, np.int64))
    recipe = ws8.recipe(source={"kwargs": {"tie": True}},
                        eval={"data": "data/eval.npz", "max_drop": 0.0})
    code, out, err = ws8.build(recipe)
    text = out + err
    assert code == 1, text
    evaluation = ws8.report()["stages"]["compile_int8"]
    assert evaluation["outcome"] == "failed"
    assert "accuracy drops" in text and "more than eval.max_drop 0.0" in text
    assert "fp32 100.00%" in text

    # the same metrics pass a looser gate, and nothing is recomputed for it
    recipe = ws8.recipe(source={"kwargs": {"tie": True}},
                        eval={"data": "data/eval.npz", "max_drop": 100.0})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    assert ws8.outcomes()["compile_int8"] == "restored"
    evaluation = ws8.metrics("compile_int8")["eval"]
    assert evaluation["fp32"] == 1.0 and evaluation["drop_points"] > 50


def test_gate_function_on_crafted_metrics() -> None:
    from bmbuild.recipe import Recipe
    from bmbuild.stages.compile_int8 import gate

    recipe = Recipe.model_validate({
        "name": "g", "source": {"framework": "onnx", "model": "m.onnx"}, "shapes": [[1, 3]],
        "prec": "INT8", "calibration": {"data": "d.npz"},
        "int8": {"tolerance": {"cos": 0.99, "euclid": 0.5}},
        "eval": {"data": "e.npz", "max_drop": 1.0}})
    good = {"cmp": {"b1/output": {"cos": 0.995, "euclid": 0.9, "sqnr": 20.0, "max_abs": 0.1}},
            "eval": {"metric": "top1", "fp32": 0.9, "int8": 0.895, "drop_points": 0.5, "samples": 200}}
    assert gate(recipe, good) == []
    layers = [{"name": f"t{i}", "node": f"n{i}", "op": "Conv", "cos": 0.9 + i / 100, "sqnr": 10.0 + i}
              for i in range(7)]
    bad = {"cmp": {"b1/output": {"cos": 0.98, "euclid": 0.9, "sqnr": 15.0, "max_abs": 0.1}},
           "layers": layers,
           "eval": {"metric": "top1", "fp32": 0.9, "int8": 0.85, "drop_points": 5.0, "samples": 200}}
    failures = gate(recipe, bad)
    assert failures[0].startswith("b1/output: cosine 0.980000 < 0.99")
    assert "candidates for int8.fp32_layers" in failures[1]
    assert [f.split()[0] for f in failures[2:7]] == ["t0", "t1", "t2", "t3", "t4"]  # worst first
    assert "drops 5.00 points" in failures[-1] and "more than eval.max_drop 1.0" in failures[-1]
    # a drop exactly at max_drop passes
    edge = dict(good, eval={**good["eval"], "drop_points": 1.0})
    assert gate(recipe, edge) == []


# --- static-batch models ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2])
def test_static_batch_model_calibrates_and_evaluates_any_sample_count(ws8: Int8Workspace, batch: int) -> None:
    """One batch size exports a static-batch model (batch 1 here used to fail in calibrate:
    it ran batches of 8); odd sample counts are padded and the padding is not counted."""
    write_npz(ws8.recipes / "data" / "eval.npz", 5, seed=9, y=np.arange(5))
    recipe = ws8.recipe(shapes=[[batch, 3, 16, 16]], calibration={"samples": 15},
                        eval={"data": "data/eval.npz", "max_drop": 100.0})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    summary = json.loads((ws8.stage_dir("calibrate") / "tiny8_cali_stats.json").read_text())
    assert summary["input"]["count"] == 15 * 3 * 16 * 16
    assert summary["/conv1/Conv_output_0"]["count"] == 15 * 8 * 16 * 16
    assert ws8.metrics("calibrate")["samples"] == 15
    assert ws8.metrics("compile_int8")["eval"]["samples"] == 5
    assert (ws8.stage_dir("compile_int8") / f"{batch}b.compilation" / "tiny8.int8.onnx").is_file()
