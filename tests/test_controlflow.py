"""Control flow a recipe's constant inputs decide is folded before int8 (bmbuild.calib.controlflow):
Silero VAD holds its whole network in the branches of an If on `sr == 16000`, so calibration saw
4 tensors and quantize found nothing to do."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bmbuild.calib.controlflow import inline_constant_ifs

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import Int8Workspace, ws8  # noqa: E402,F401


def branch(name: str, scale: float, clash: bool = False) -> onnx.GraphProto:
    """y = relu(x @ W * scale); with `clash`, its inner tensor is named like one of the top graph's."""
    inner = "sr_is_16k" if clash else f"{name}_mm"
    weight = numpy_helper.from_array((np.arange(16, dtype=np.float32).reshape(4, 4) - 7.5) * scale, f"{name}_w")
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", f"{name}_w"], [inner], name="matmul"),
         helper.make_node("Relu", [inner], [f"{name}_y"], name="relu")],
        name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 4])], [weight])


def if_model(condition_on: str = "sr", clash: bool = False) -> onnx.ModelProto:
    rate = numpy_helper.from_array(np.array(16000, dtype=np.int64), "rate")
    nodes = [helper.make_node("Cast", ["sr"], ["sr64"], to=TensorProto.INT64),
             helper.make_node("Equal", ["sr64" if condition_on == "sr" else "x_int", "rate"], ["sr_is_16k"]),
             helper.make_node("If", ["sr_is_16k"], ["y"], name="choose_rate",
                              then_branch=branch("then", 1.0, clash), else_branch=branch("else", -0.5))]
    if condition_on == "x":
        nodes.insert(0, helper.make_node("Cast", ["x"], ["x_int"], to=TensorProto.INT64))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                            helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [rate])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, sr: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
    return session.run(None, {"x": x, "sr": np.array(sr, dtype=np.int64)})[0]


@pytest.mark.parametrize("sr", [16000, 8000])
@pytest.mark.parametrize("clash", [False, True])
def test_the_branch_a_constant_input_chooses_replaces_the_if(sr: int, clash: bool) -> None:
    original = if_model()  # (ONNX Runtime refuses a branch that reuses an outer name: the clash is ours to fix)
    model = if_model(clash=clash)
    assert inline_constant_ifs(model, {"sr": np.array(sr, dtype=np.int64)}) == ["choose_rate"]
    onnx.checker.check_model(model, full_check=True)
    assert "If" not in {node.op_type for node in model.graph.node}
    assert {init.name for init in model.graph.initializer} >= {"then_w" if sr == 16000 else "else_w"}
    assert np.array_equal(run(model, sr), run(original, sr))
    assert not np.array_equal(run(original, 16000), run(original, 8000))  # the branches differ
    names = [out for node in model.graph.node for out in node.output]
    assert len(names) == len(set(names))  # a branch name that clashed was made unique


def test_an_if_on_data_or_on_an_input_without_a_value_stays() -> None:
    model = if_model()
    assert inline_constant_ifs(model, {}) == []
    model = if_model(condition_on="x")
    assert inline_constant_ifs(model, {"sr": np.array(16000, dtype=np.int64)}) == []
    assert "If" in {node.op_type for node in model.graph.node}


def test_int8_of_a_model_whose_layers_sit_in_an_if_on_a_constant_input(ws8: Int8Workspace) -> None:
    onnx.save(if_model(), ws8.recipes / "rate.onnx")
    np.savez(ws8.recipes / "data" / "x.npz", x=np.random.default_rng(0).standard_normal((24, 4)).astype(np.float32))
    recipe = ws8.recipe("rate", source={"framework": "onnx", "model": "rate.onnx"}, shapes=[[1, 4], []],
                        inputs=[{"name": "x"}, {"name": "sr", "dtype": "int64", "value": 16000}],
                        calibration={"data": "data/x.npz", "samples": 16, "method": "minmax"},
                        int8={"cmp_samples": 8, "tolerance": {"cos": 0.95, "euclid": 0.5}})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    log = (ws8.root / "build" / "rate" / "logs" / "calibrate.log").read_text()
    assert "inlined the branch the recipe's constant inputs choose of choose_rate" in log
    assert ws8.metrics("quantize", "rate")["quantized_weights"] == 1  # the branch's MatMul weight
    assert ws8.metrics("compile_int8", "rate")["cmp"]["b1/y"]["cos"] > 0.99
