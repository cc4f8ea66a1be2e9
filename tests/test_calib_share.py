"""Ranges the target shares between tensors before it quantizes (tpu-mlir's calibration_process,
`bmbuild.calib.qdq.shared_table`): a Relu's input takes the Relu's range, a Concat's inputs the
Concat's, a Relu whose input is read elsewhere too takes its input's range."""

from __future__ import annotations

from typing import Any

import numpy as np


def graph_of(nodes: list[Any], inputs: list[str], outputs: list[str]) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    from bmbuild.calib.qdq import GraphView

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), f"w{i}") for i in range(4)]
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4, 8, 8]) for n in inputs + outputs]
    graph = helper.make_graph(nodes, "g", info[:len(inputs)], info[len(inputs):], initializer=weights)
    return GraphView.of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_relu_input_used_once_is_quantized_with_the_relu_range() -> None:
    """AveragePool -> Relu -> Conv (an op tpu-mlir does not fuse a Relu into): its
    BackwardCalibartion<Relu> gives the pooled tensor the Relu's range, uint8, instead of int8 over
    its own signed range."""
    from onnx import helper

    from bmbuild.calib.qdq import plan

    graph = graph_of([helper.make_node("AveragePool", ["x"], ["s"], kernel_shape=[2, 2]),
                      helper.make_node("Relu", ["s"], ["r"]), helper.make_node("Conv", ["r", "w0"], ["y"])],
                     ["x"], ["y"])
    table = {"x": (2.0, -2.0, 2.0), "s": (3.0, -4.0, 3.5), "r": (2.5, 0.0, 3.5), "y": (5.0, -6.0, 6.0)}
    tensors = plan(graph, table, "BM1684X").tensors
    assert tensors["s"] == tensors["r"] and tensors["s"].unsigned and tensors["s"].scale == 2.5 / 255
    assert tensors["x"].scale == 2.0 / 127  # the pool's input keeps its own


def test_concat_inputs_share_the_concat_range_and_a_shared_relu_input_is_not_changed() -> None:
    """Conv a, Conv b -> Concat c: a and b (read only by the Concat) take c's range. A Relu whose
    input is also read by a Conv leaves that input alone and takes its signed range forward."""
    from onnx import helper

    from bmbuild.calib.qdq import plan

    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"]), helper.make_node("Conv", ["x", "w1"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1), helper.make_node("Conv", ["c", "w2"], ["d"]),
             helper.make_node("Relu", ["d"], ["r"]), helper.make_node("Conv", ["r", "w3"], ["e"]),
             helper.make_node("Conv", ["d", "w0"], ["f"]), helper.make_node("Add", ["e", "f"], ["y"])]
    graph = graph_of(nodes, ["x"], ["y"])
    table = {"x": (2.0, -2.0, 2.0), "a": (1.0, -1.5, 1.5), "b": (3.0, -3.5, 3.0), "c": (2.5, -3.5, 3.0),
             "d": (4.0, -5.0, 5.0), "r": (3.0, 0.0, 5.0), "e": (2.0, -2.0, 2.0),
             "f": (2.0, -2.0, 2.0), "y": (6.0, -6.0, 9.0)}
    tensors = plan(graph, table, "BM1684X").tensors
    assert tensors["a"] == tensors["b"] == tensors["c"] and tensors["c"].scale == 2.5 / 127
    assert tensors["d"].scale == 4.0 / 127  # also read by a Conv: kept
    assert tensors["r"] == tensors["d"]  # ForwardCalibartion<Relu>: the input's signed range
