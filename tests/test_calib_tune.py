"""Threshold tuning after kl (tpu-mlir's default SimpleTuner, `bmbuild.calib.tune`): which tensors
are scored against which consumer, and that a tuned threshold lowers the consumer's error."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bmbuild.calib.histogram import StatsCollector


def model_of(nodes: list[Any], inputs: dict[str, int], outputs: dict[str, int], weights: dict[str, np.ndarray]) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    def info(name: str, channels: int) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", channels, 8, 8])

    graph = helper.make_graph(nodes, "g", [info(n, c) for n, c in inputs.items()],
                              [info(n, c) for n, c in outputs.items()],
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def session_of(model_bytes: bytes) -> Any:
    from bmbuild.toolchains.reference import ort_session

    return ort_session(model_bytes)


def test_tuning_raises_a_kl_threshold_that_hurts_its_consumer() -> None:
    """x (a HardSwish output) -> Exp: kl clips x's tail, where Exp is largest; scored at Exp's
    output the tuner moves the threshold up towards |x| max, and Exp's error drops."""
    from onnx import helper

    from bmbuild.calib.qdq import GraphView
    from bmbuild.calib.tune import distance, import_quant_bias, tune

    model = model_of([helper.make_node("Exp", ["x"], ["y"])], {"x": 4}, {"y": 4}, {})
    v = np.random.default_rng(1).normal(size=(16, 4, 8, 8)).astype(np.float32) * 2
    x = v * np.clip(v + 3, 0, 6) / 6
    values = {"x": x, "y": np.exp(x)}
    collector = StatsCollector()
    for name, value in values.items():
        collector.update(name, value)
    table = collector.thresholds("kl")
    absmax = {name: collector[name].absmax for name in table}
    tune_set = {name: value[:5] for name, value in values.items()}
    tuned, pairs, failed = tune(GraphView.of(model), table, absmax, [tune_set], session_of)
    kl = table["x"][0]
    assert pairs == 1 and not failed and kl < tuned["x"] <= absmax["x"]
    assert tuned["y"] == table["y"][0]  # a graph output has no consumer to tune against

    def error(threshold: float) -> float:
        return distance(tune_set["y"], np.exp(import_quant_bias(tune_set["x"], threshold)))

    assert error(tuned["x"]) < 0.5 * error(kl)


def test_pairs_follow_simple_tuner_order_and_keep_the_largest_threshold() -> None:
    """x -> Conv1 -> a, x -> Conv2 -> b, Add(a, b): x is tuned against Conv1 and, all its inputs
    tuned already, against Conv2 again; a and b against the Add. A tensor keeps the largest of its
    tuned thresholds, never less than kl."""
    from onnx import helper

    from bmbuild.calib.qdq import GraphView
    from bmbuild.calib.tune import Pair, Tuner, tune_pairs

    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.normal(size=(4, 4, 1, 1)).astype(np.float32) for i in (1, 2)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Conv", ["x", "w2"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["c"])]
    graph = GraphView.of(model_of(nodes, {"x": 4}, {"c": 4}, weights))
    table = {"x": (1.0, -2.0, 2.0), "a": (1.0, -2.0, 2.0), "b": (1.0, -2.0, 2.0), "c": (1.0, -4.0, 4.0)}
    absmax = {"x": 2.0, "a": 2.0, "b": 2.0, "c": 4.0}
    pairs = tune_pairs(graph, table, absmax)
    assert [(p.tensor, p.output, p.inputs) for p in pairs] == [
        ("x", "a", ["x"]), ("x", "b", ["x"]), ("a", "c", ["a", "b"]), ("b", "c", ["a", "b"])]
    assert pairs[0].candidates[0] == 1.0 and pairs[0].candidates[-1] == pytest.approx(2.0)
    assert len(pairs[0].candidates) == 22
    assert tune_pairs(graph, {**table, "x": (1.995, -2.0, 2.0)}, absmax)[0].tensor == "a"  # range < 0.01: not tuned

    tuner = Tuner(graph, pairs, session_of)
    picks = [3, 7, 0, 0]  # candidate index each pair finds best
    tuner.sums = [np.where(np.arange(22) == k, 0.0, 1.0) for k in picks]
    tuned = tuner.thresholds(table)
    assert tuned["x"] == pytest.approx(pairs[1].candidates[7])  # the larger of Conv1's and Conv2's
    assert tuned["a"] == tuned["b"] == 1.0 and tuned["c"] == 1.0
    assert isinstance(pairs[0], Pair)


def test_a_consumer_onnxruntime_cannot_run_is_skipped_and_named() -> None:
    """A layer that cannot run on its own leaves its tensors' kl thresholds alone: no crash."""
    from onnx import helper

    from bmbuild.calib.qdq import GraphView
    from bmbuild.calib.tune import tune

    model = model_of([helper.make_node("Exp", ["x"], ["y"])], {"x": 4}, {"y": 4}, {})
    table = {"x": (1.0, -2.0, 2.0), "y": (7.0, 0.1, 7.4)}

    def broken(model_bytes: bytes) -> Any:
        raise RuntimeError("cannot load this op")

    tuned, pairs, failed = tune(GraphView.of(model), table, {"x": 2.0, "y": 7.4}, [], broken)
    assert tuned == {"x": 1.0, "y": 7.0} and pairs == 0
    assert failed == {"y": "RuntimeError: cannot load this op"}
