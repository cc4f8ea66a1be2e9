"""Threshold tuning after kl calibration, as tpu-mlir's `run_calibration` does by default.

tpu-mlir 1.30.2 `python/tools/run_calibration.py` runs `ActivationCalibrator.run`
(`calibration/kld_calibrator.py`), which after the kl thresholds runs `SimpleTuner.run`
(`calibration/simple_tunner.py`) whenever `--tune_num` > 0 (default 5) and the method is kl (not
max, percentile9999 or mse). The tuner, per op in graph order:

- picks the inputs to tune (`SimpleTuner.run`): every input not tuned yet, or, when all are,
  the first one again; each is tuned against this op, its consumer;
- tries `tune_steps + 1` = 22 thresholds from the kl threshold up to the tensor's |x| max
  (`find_better_threshold`; nothing below kl), skipped when that range is under 0.01;
- scores each (`calc_distance`) on the first `tune_num` calibration samples: every input of the
  consumer, from fp32, is quantized symmetrically with the candidate (`import_quant_bias`:
  round(x * 127 / T), clipped to -128..127), the consumer runs with its weights quantized
  (`fake_quant_weight`), and the distance is ||fp32 out - out||_2 / ||fp32 out||_1, averaged;
- keeps the first candidate with the lowest distance, and a tensor's threshold only ever grows
  (the largest over the consumers it was tuned against).

Here an "op" is a `bmbuild.calib.qdq.Layer` (the ONNX nodes tpu-mlir's top dialect fuses into one
op), and a tune sample is one calibration batch as it ran (per sample with a batch-1 model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bmbuild.calib.qdq import GraphView, Layer, fake_quant_weight, layers, weight_axis

TUNE_NUM = 5  # run_calibration --tune_num default
TUNE_STEPS = 21  # SimpleTuner.tune_steps
MIN_TUNED_DIFF = 0.01  # SimpleTuner.find_better_threshold's min_tuned_diff (an absolute |x| range)


@dataclass
class Pair:
    """One `find_better_threshold` call: `tensor`'s threshold scored at `consumer`'s output."""

    tensor: str
    consumer: Layer
    inputs: list[str]  # the consumer's inputs, all quantized with the candidate (calc_distance)
    output: str
    candidates: np.ndarray


def import_quant_bias(x: np.ndarray, threshold: float) -> np.ndarray:
    """tpu-mlir's fake quantization in the tuner: symmetric int8, -128..127, whatever the sign."""
    scale = 127.0 / threshold
    return (np.clip(np.round(x * scale), -128, 127) / scale).astype(x.dtype, copy=False)


def candidates(threshold: float, absmax: float) -> np.ndarray | None:
    """The thresholds `find_better_threshold` tries (kl first), None when it skips the tensor."""
    step = (absmax - threshold) / TUNE_STEPS
    if not step > 0 or abs(absmax - threshold) <= MIN_TUNED_DIFF:
        return None
    return threshold + step * np.arange(TUNE_STEPS + 1)


def layer_io(graph: GraphView, layer: Layer) -> tuple[list[str], list[str]]:
    """A layer's computed inputs from outside it and its outputs read outside it, in order."""
    members = set(layer.nodes)
    inputs: list[str] = []
    outputs: list[str] = []
    for index in layer.nodes:
        node = graph.nodes[index]
        for name in node.input:
            parent = graph.producer.get(name)
            if name and name not in graph.constants and (parent is None or parent not in members):
                inputs.append(name)
        outputs += [o for o in node.output if o and not graph.only_used_by(o, members)]
    return list(dict.fromkeys(inputs)), outputs


def tune_pairs(graph: GraphView, table: Mapping[str, tuple[float, float, float]],
               absmax: Mapping[str, float]) -> list[Pair]:
    """The (tensor, consumer) pairs `SimpleTuner.run` scores, in its order, among the tensors it
    can score here: calibrated float inputs and outputs, a range above `MIN_TUNED_DIFF`."""
    pairs: list[Pair] = []
    tuned: set[str] = set()
    for layer in layers(graph, "BM1684X"):  # the grouping does not depend on the chip
        inputs, outputs = layer_io(graph, layer)
        if not inputs or not outputs or outputs[0] not in table or any(i not in table for i in inputs):
            continue  # reads a tensor without statistics (integer, skipped) or writes one
        chosen = [inputs[0]] if all(i in tuned for i in inputs) else [i for i in inputs if i not in tuned]
        for tensor in chosen:
            tuned.add(tensor)
            found = candidates(table[tensor][0], absmax[tensor])
            if found is not None:
                pairs.append(Pair(tensor, layer, inputs, outputs[0], found))
    return pairs


def layer_model(graph: GraphView, pair: Pair) -> Any:
    """An ONNX model of one consumer layer: its inputs in, its output out, weights fake-quantized."""
    from onnx import TensorProto, helper, numpy_helper

    needed = _with_constant_producers(graph, pair.consumer.nodes)
    nodes = [graph.nodes[i] for i in needed]
    quantized = {}
    for index in pair.consumer.nodes:
        node = graph.nodes[index]
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1 \
                and graph.constants.get(node.input[1]) is not None:
            weight = np.asarray(graph.constants[node.input[1]], dtype=np.float32)
            quantized[node.input[1]] = fake_quant_weight(weight, weight_axis(graph, node, True))
    produced = {o for node in nodes for o in node.output}
    inits = []
    for name in dict.fromkeys(i for node in nodes for i in node.input):
        value = quantized.get(name, graph.constants.get(name))
        if name and name not in produced and value is not None:
            inits.append(numpy_helper.from_array(np.asarray(value), name))
    model_inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in pair.inputs]
    model_output = [helper.make_tensor_value_info(pair.output, TensorProto.FLOAT, None)]
    sub = helper.make_graph(nodes, "tune", model_inputs, model_output, initializer=inits)
    model = helper.make_model(sub, opset_imports=list(graph.model.opset_import))
    model.ir_version = graph.model.ir_version
    return model


def _with_constant_producers(graph: GraphView, members: list[int]) -> list[int]:
    """`members` plus the nodes that compute their constant-only inputs (values not stored)."""
    needed, stack = set(members), list(members)
    while stack:
        for name in graph.nodes[stack.pop()].input:
            parent = graph.producer.get(name)
            if name in graph.constants and graph.constants[name] is None and parent is not None \
                    and parent not in needed:
                needed.add(parent)
                stack.append(parent)
    return sorted(needed)


def distance(ref: np.ndarray, out: np.ndarray, norm: float | None = None) -> float:
    """`SimpleTuner.calc_distance`'s measure: ||ref - out||_2 / ||ref||_1 (`norm`, if known)."""
    if norm is None:
        norm = float(np.abs(ref).sum(dtype=np.float64))
    return float(np.linalg.norm((ref - out).ravel()) / norm) if norm > 0 else 0.0


class Tuner:
    """Accumulates each pair's distances over the tune samples, then picks the thresholds.

    A consumer that onnxruntime cannot run on its own (an op it cannot load cut out of its graph,
    a shape it cannot take) is not a failure of calibration: its pairs are dropped, named in
    `failed`, and their tensors keep the thresholds they have."""

    def __init__(self, graph: GraphView, pairs: list[Pair], session_of: Any):
        self.sessions: dict[int, Any] = {}
        self.failed: dict[str, str] = {}
        for pair in pairs:
            key = id(pair.consumer)
            if key not in self.sessions and pair.output not in self.failed:
                try:
                    self.sessions[key] = session_of(layer_model(graph, pair).SerializeToString())
                except Exception as exc:  # onnxruntime's errors have no common base class
                    self.failed[pair.output] = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.pairs = [p for p in pairs if id(p.consumer) in self.sessions]
        self.sums = [np.zeros(len(p.candidates)) for p in self.pairs]

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        """One tune sample (batch): every tensor's fp32 value."""
        for pair, sums in zip(self.pairs, self.sums):
            if pair.output in self.failed:
                continue
            try:
                sums += self._distances(pair, values)
            except Exception as exc:
                self.failed[pair.output] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def _distances(self, pair: Pair, values: Mapping[str, np.ndarray]) -> np.ndarray:
        session = self.sessions[id(pair.consumer)]
        ref = values[pair.output]
        norm = float(np.abs(ref).sum(dtype=np.float64))
        found = np.empty(len(pair.candidates))
        for i, threshold in enumerate(pair.candidates):
            feeds = {name: import_quant_bias(values[name], float(threshold)) for name in pair.inputs}
            found[i] = distance(ref, session.run([pair.output], feeds)[0], norm)
        return found

    def thresholds(self, table: Mapping[str, tuple[float, float, float]]) -> dict[str, float]:
        """Tensor -> tuned threshold: the first lowest-distance candidate of each pair, the
        largest over a tensor's pairs and never below its kl threshold."""
        tuned = {name: float(row[0]) for name, row in table.items()}
        for pair, sums in zip(self.pairs, self.sums):
            if pair.output not in self.failed:
                tuned[pair.tensor] = max(tuned[pair.tensor], float(pair.candidates[int(np.argmin(sums))]))
        return tuned


def tune(graph: GraphView, table: Mapping[str, tuple[float, float, float]], absmax: Mapping[str, float],
         samples: Iterable[Mapping[str, np.ndarray]], session_of: Any) -> tuple[dict[str, float], int, dict[str, str]]:
    """The tuned threshold of every tensor in `table`, the number of pairs scored, and the
    consumers (by output) that could not be run, with why.

    `samples` yields every tensor's fp32 value per tune sample; `session_of(model_bytes)` makes
    an onnxruntime session."""
    pairs = tune_pairs(graph, table, absmax)
    if not pairs:
        return {name: float(row[0]) for name, row in table.items()}, 0, {}
    tuner = Tuner(graph, pairs, session_of)
    for values in samples:
        tuner.add(values)
    scored = sum(1 for pair in tuner.pairs if pair.output not in tuner.failed)
    return tuner.thresholds(table), scored, tuner.failed
