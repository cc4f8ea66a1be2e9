"""int8.asymmetric: auto (the default): on BM1684X calibrate builds the int8 model both ways and
keeps the mode closer to fp32; BM1684 (no asymmetric int8) and models that never go below zero
stay symmetric; the choice is a file the later stages read, checked like any cached input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import Int8Workspace, samples, ws8  # noqa: E402,F401

from bmbuild.calib.asymmetry import asymmetric_mode, choice_name, read_choice, write_choice  # noqa: E402
from bmbuild.errors import StageFailed  # noqa: E402

LOPSIDED = {"source": {"framework": "pytorch", "model": "int8_models.py:lopsided"}}


def zero_points(ws: Int8Workspace, name: str) -> list[int]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(ws.stage_dir("quantize", name) / f"{name}.int8.onnx"))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [int(consts[n.input[2]].ravel()[0]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and consts[n.input[2]].size == 1]


def build(ws: Int8Workspace, name: str, says: str = "", **overrides: Any) -> dict[str, Any]:
    code, out, err = ws.build(ws.recipe(name, **overrides))
    assert code == 0, out + err
    assert says in out, out
    return ws.metrics("compile_int8", name)["cmp"]["b1/output"]


def test_auto_on_bm1684x_keeps_asymmetric_where_it_is_closer_to_fp32(ws8: Int8Workspace) -> None:
    auto = build(ws8, "auto", "tensors; asymmetric int8: yes", target="BM1684X", **LOPSIDED)
    choice = json.loads((ws8.stage_dir("calibrate", "auto") / choice_name("auto")).read_text())
    assert choice["asymmetric"] is True, choice
    assert choice["cos"]["asymmetric"] > choice["cos"]["symmetric"] + 1e-4, choice
    assert any(zero_points(ws8, "auto")) and ws8.metrics("quantize", "auto")["asymmetric"] is True
    # what it chose is what the held-out samples confirm: closer to fp32 than the symmetric build
    symmetric = build(ws8, "sym", target="BM1684X", int8={"asymmetric": False}, **LOPSIDED)
    assert not any(zero_points(ws8, "sym")) and not (ws8.stage_dir("calibrate", "sym") / choice_name("sym")).exists()
    assert auto["cos"] > symmetric["cos"] and auto["sqnr"] > symmetric["sqnr"], (auto, symmetric)


def test_auto_is_symmetric_on_bm1684_and_when_asymmetric_gains_little(ws8: Int8Workspace) -> None:
    build(ws8, "old", target="BM1684", **LOPSIDED)  # BM1684 has no asymmetric int8: nothing to choose
    assert not any(zero_points(ws8, "old")) and not (ws8.stage_dir("calibrate", "old") / choice_name("old")).exists()
    # tiny_classifier on inputs >= 0: only its logits go below zero, the rest are ReLU outputs
    np.savez(ws8.recipes / "data" / "positive.npz", x=np.abs(samples(24)))
    build(ws8, "relu", target="BM1684X", calibration={"data": "data/positive.npz"})
    choice = json.loads((ws8.stage_dir("calibrate", "relu") / choice_name("relu")).read_text())
    assert choice["asymmetric"] is False and choice["cos"]["asymmetric"] <= choice["cos"]["symmetric"] + 1e-4
    assert not any(zero_points(ws8, "relu"))


def test_changing_the_mode_reruns_the_stages_that_read_it(ws8: Int8Workspace) -> None:
    build(ws8, "m", target="BM1684X", **LOPSIDED)
    build(ws8, "m", target="BM1684X", int8={"asymmetric": True}, **LOPSIDED)
    # calibrate no longer chooses; quantize builds what auto had chosen: the same model, compile_int8 is kept
    assert ws8.outcomes("m") == {"trace": "up-to-date", "compile_fp32": "up-to-date", "calibrate": "executed",
                                 "quantize": "executed", "compile_int8": "up-to-date"}
    build(ws8, "m", target="BM1684X", int8={"asymmetric": False}, **LOPSIDED)
    assert ws8.outcomes("m")["calibrate"] == "up-to-date" and not any(zero_points(ws8, "m"))


@pytest.mark.parametrize("text", ["", "{", "[]", '{"asymmetric": "yes"}', '{"reason": "x"}', "\xff"])
def test_a_damaged_choice_file_fails_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / choice_name("m")
    path.write_text(text, encoding="latin-1")
    with pytest.raises(StageFailed, match=str(path)):
        read_choice(path)


def test_the_recipe_decides_unless_it_says_auto(tmp_path: Path) -> None:
    write_choice(tmp_path / choice_name("m"), True, "test")
    assert asymmetric_mode({"asymmetric": True}, tmp_path / "nowhere", "m") is True
    assert asymmetric_mode({}, tmp_path, "m") is False  # not keyed: false, or a chip without it
    assert asymmetric_mode({"asymmetric": "auto"}, tmp_path, "m") is True
    assert asymmetric_mode({"asymmetric": "auto"}, tmp_path / "not-yet", "m") is False  # a dry run before calibrate


def test_asymmetric_takes_each_tensors_min_max_not_the_threshold() -> None:
    """tpu-mlir's ImportCalibrationTable (getMinMax) under --asymmetric: [min, max] of the table,
    whatever the method's threshold; symmetric int8 keeps the threshold."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bmbuild.calib.qdq import GraphView, plan

    weight = numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Conv", ["y", "w"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    table = {"x": (1.0, -0.5, 3.0), "y": (2.0, -4.0, 10.0), "z": (5.0, -5.0, 5.0)}
    view = GraphView.of(model)
    asymmetric = plan(view, table, "BM1684X", asymmetric=True).tensors["y"]
    assert asymmetric.scale == pytest.approx(14.0 / 255) and asymmetric.zero_point == round(-128 + 4.0 / (14.0 / 255))
    symmetric = plan(view, table, "BM1684X").tensors["y"]
    assert symmetric.scale == pytest.approx(2.0 / 127) and symmetric.zero_point == 0


def test_a_bmodel_far_from_tpu_mlirs_interpreter_blames_code_generation_not_layers() -> None:
    """The int8 gate's advice when tpu-mlir's interpreter of the int8 model is close to fp32 and
    the bmodel is not (its asymmetric LeViT: 0.978 vs 0.570): no layer to keep in float would help."""
    from bmbuild.compare import codegen_hint

    broken = {"cmp": {"b1/output": {"cos": 0.570}}, "interpreter_outputs": {"output_Div": 0.978}, "asymmetric": True}
    (hint,) = codegen_hint(broken)
    assert "code generation" in hint and "int8.asymmetric: false" in hint
    assert codegen_hint({**broken, "cmp": {"b1/output": {"cos": 0.95}}}) == []  # the interpreter is as far
    assert "asymmetric" not in codegen_hint({**broken, "asymmetric": False})[0]
    assert codegen_hint({"cmp": {"b1/output": {"cos": 0.5}}}) == []  # the reference: no interpreter
