"""An int8 QDQ ONNX model that quantizes what the target quantizes, and nothing else.

Every tensor that BM1684/BM1684X hold in int8 gets a QuantizeLinear/DequantizeLinear pair (its
value becomes the one int8 hardware holds); every tensor the target keeps in float, or that
lives inside an op tpu-mlir fuses, stays float. The plan is made in three steps:

1. `layers`: nodes grouped into the ops tpu-mlir lowers (a LayerNorm written as nine ONNX
   nodes is one float op; Conv + BatchNorm + bias + Relu is one int8 op; a chain of
   element-wise functions of one tensor, such as a decomposed HardSwish or GELU, is one int8
   lookup table), each with a `Kind` for the chip (`bmbuild.calib.targets`).
2. `plan`: the tensors to quantize (inputs and outputs of int8 layers) with their scales from
   the calibration table: symmetric, int8 (threshold/127) or, for a tensor that is never
   negative, uint8 (threshold/255) as tpu-mlir does; a tensor that was constant during
   calibration (all zeros, say) or has no statistics is left in float and named. On BM1684X a
   SiLU/GELU output read only by Conv/MatMul is asymmetric int8 (a zero point), as tpu-mlir's
   `--part_asymmetric` calibration makes it (`bmbuild.calib.targets.asymmetric_output`).
3. `apply`: the rewritten model, weights stored as int8 (per output channel for convolutions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bmbuild.calib.targets import (PASS_THROUGH, SATURATING, UNARY, WEIGHTED, Kind, asymmetric_output, lut_function,
                                   op_kind)

DEQUANT_SUFFIX = "_DequantizeLinear_Output"
QUANT_SUFFIX = "_QuantizeLinear_Output"
_ABSORBED_AFTER_WEIGHTS = frozenset({"BatchNormalization", "Add", "Mul", "Relu", "Clip"})
_ACTIVATIONS = frozenset({"Relu", "Clip"})
# tpu-mlir's Top canonicalizer folds a Relu (a Clip from 0 is a Relu with relu_limit) into the op
# before it when that op has the SupportFuseRelu trait and its output has no other use
# (lib/Dialect/Top/Canonicalize/Relu.cpp, TopFuseRelu; TopOps.td marks Add, Sub, Mul, BatchNorm,
# Scale, Conv, MatMul, ...): a residual sum is never held in int8 before its Relu, only after,
# as an unsigned tensor with all 256 levels. Ops with weights are grouped in `_weighted_layers`.
_FUSES_RELU = frozenset({"Add", "Sub", "Mul", "BatchNormalization"})


@dataclass
class GraphView:
    """What the planner needs to know about an ONNX graph, computed once."""

    model: Any
    nodes: list[Any]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    constants: dict[str, Any]  # name -> numpy value (None: computed from constants only)
    float_tensors: set[str]
    shapes: dict[str, list[int | None]]
    outputs: list[str]

    @classmethod
    def of(cls, model: Any) -> GraphView:
        import onnx
        from onnx import numpy_helper, shape_inference

        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception:  # a graph shape inference cannot follow: types from the model alone
            inferred = model
        infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        floats = {onnx.TensorProto.FLOAT}  # what QuantizeLinear takes at every opset
        float_tensors = {vi.name for vi in infos if vi.type.tensor_type.elem_type in floats}
        shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None
                            for d in vi.type.tensor_type.shape.dim]
                  for vi in infos if vi.type.tensor_type.HasField("shape")}
        constants: dict[str, Any] = {}
        for init in model.graph.initializer:
            constants[init.name] = numpy_helper.to_array(init)
            shapes.setdefault(init.name, list(init.dims))
            if init.data_type in floats:
                float_tensors.add(init.name)
        nodes = list(model.graph.node)
        producer, consumers = {}, {}
        for index, node in enumerate(nodes):
            for out in node.output:
                if out:
                    producer[out] = index
            for inp in node.input:
                if inp:
                    consumers.setdefault(inp, []).append(index)
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        constants[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name in ("value_float", "value_int"):
                        constants[node.output[0]] = np.asarray(attr.f if attr.name == "value_float" else attr.i)
            elif node.input and all(not i or i in constants for i in node.input):
                for out in node.output:  # computed from constants only (folded by every compiler)
                    constants.setdefault(out, None)
        return cls(model, nodes, producer, consumers, constants, float_tensors, shapes,
                   [o.name for o in model.graph.output])

    def is_scalar(self, name: str) -> bool:
        value = self.constants.get(name)
        if value is not None:
            return int(np.size(value)) == 1
        shape = self.shapes.get(name)
        return shape is not None and all(d == 1 for d in shape)

    def variable_inputs(self, index: int) -> list[str]:
        """Inputs of a node that are computed at run time (not constants, not optional blanks)."""
        return [i for i in self.nodes[index].input if i and i not in self.constants]

    def only_used_by(self, tensor: str, group: set[int]) -> bool:
        return tensor not in self.outputs and all(c in group for c in self.consumers.get(tensor, []))


@dataclass
class Layer:
    """One op as the target runs it: one or more ONNX nodes, their kind, a readable label."""

    nodes: list[int]
    kind: Kind
    label: str

    def names(self, graph: GraphView) -> list[str]:
        return [graph.nodes[i].name or graph.nodes[i].output[0] for i in self.nodes]


# --- step 1: layers ------------------------------------------------------------------------
def layers(graph: GraphView, chip: str, fp32_nodes: set[str] = frozenset()) -> list[Layer]:
    """Group the graph's nodes into the target's ops, in graph order."""
    taken: dict[int, Layer] = {}
    for finder in (_norm_layers, _weighted_layers, _fused_relu_layers, _lut_layers):
        for layer in finder(graph, taken, chip):
            for index in layer.nodes:
                taken[index] = layer
    for index, node in enumerate(graph.nodes):
        if index not in taken:
            taken[index] = Layer([index], _single_kind(graph, index, chip), node.op_type)
    ordered: list[Layer] = []
    seen: set[int] = set()
    for index in range(len(graph.nodes)):
        layer = taken[index]
        if id(layer) not in seen:
            seen.add(id(layer))
            if layer.kind is Kind.INT8 and fp32_nodes.intersection(layer.names(graph)):
                layer.kind = Kind.FLOAT
            ordered.append(layer)
    return ordered


def _producer_op(graph: GraphView, tensor: str, op_types: tuple[str, ...]) -> int | None:
    index = graph.producer.get(tensor)
    return index if index is not None and graph.nodes[index].op_type in op_types else None


def _norm_layers(graph: GraphView, taken: Mapping[int, Layer], chip: str) -> list[Layer]:
    """LayerNorm / RMSNorm written out as ONNX ops: Div(s, Sqrt(Add(ReduceMean(s*s), eps))),
    s = x - ReduceMean(x) (or x itself), then an optional affine Mul/Add by constants."""
    found = []
    for index, node in enumerate(graph.nodes):
        if node.op_type != "Div" or index in taken or len(node.input) != 2:
            continue
        s, d = node.input
        sqrt = _producer_op(graph, d, ("Sqrt",))
        add = None if sqrt is None else _producer_op(graph, graph.nodes[sqrt].input[0], ("Add",))
        var_in = [] if add is None else [i for i in graph.nodes[add].input if i not in graph.constants]
        mean2 = _producer_op(graph, var_in[0], ("ReduceMean",)) if len(var_in) == 1 else None
        square = None if mean2 is None else _producer_op(graph, graph.nodes[mean2].input[0], ("Pow", "Mul"))
        if square is None or s not in graph.nodes[square].input:
            continue
        group = {index, sqrt, add, mean2, square}
        sub = _producer_op(graph, s, ("Sub",))
        if sub is not None:
            mean1 = _producer_op(graph, graph.nodes[sub].input[1], ("ReduceMean",))
            if mean1 is not None and graph.nodes[mean1].input[0] == graph.nodes[sub].input[0]:
                group |= {sub, mean1}
        interior = [o for i in group for o in graph.nodes[i].output if i != index]
        if any(i in taken for i in group) or not all(graph.only_used_by(t, group) for t in interior):
            continue
        last = index
        for _ in range(2):  # gamma, then beta
            users = graph.consumers.get(graph.nodes[last].output[0], [])
            if (len(users) != 1 or graph.nodes[users[0]].op_type not in ("Mul", "Add") or users[0] in taken
                    or graph.nodes[last].output[0] in graph.outputs
                    or len(graph.variable_inputs(users[0])) != 1):
                break
            last = users[0]
            group.add(last)
        found.append(Layer(sorted(group), Kind.FLOAT, "LayerNorm" if sub is not None else "RMSNorm"))
    return found


def _weighted_layers(graph: GraphView, taken: Mapping[int, Layer], chip: str) -> list[Layer]:
    """Conv/Gemm/MatMul with constant weights plus what the compiler folds into them:
    BatchNorm, bias Add, constant Mul, then one Relu/Clip."""
    found = []
    for index, node in enumerate(graph.nodes):
        if node.op_type not in WEIGHTED or index in taken or len(node.input) < 2:
            continue
        if node.input[1] not in graph.constants:
            continue
        group, last = [index], index
        while True:
            out = graph.nodes[last].output[0]
            users = graph.consumers.get(out, [])
            if len(users) != 1 or out in graph.outputs or users[0] in taken:
                break
            user = graph.nodes[users[0]]
            if user.op_type not in _ABSORBED_AFTER_WEIGHTS or len(graph.variable_inputs(users[0])) != 1:
                break
            group.append(users[0])
            last = users[0]
            if user.op_type in _ACTIVATIONS:
                break
        label = "+".join(graph.nodes[i].op_type for i in group)
        found.append(Layer(group, _single_kind(graph, index, chip), label))
    return found


def _fused_relu_layers(graph: GraphView, taken: Mapping[int, Layer], chip: str) -> list[Layer]:
    """An Add/Sub/Mul of two tensors, or a BatchNorm, and the Relu (or Clip from 0) that is the
    only reader of its output: one int8 op, as tpu-mlir fuses them (`_FUSES_RELU`)."""
    found = []
    for index, node in enumerate(graph.nodes):
        if node.op_type not in _FUSES_RELU or index in taken or not node.output:
            continue
        if node.op_type != "BatchNormalization" and len(graph.variable_inputs(index)) != 2:
            continue  # one constant operand: part of a HardSwish-like chain, a lookup table
        out = node.output[0]
        users = graph.consumers.get(out, [])
        if len(users) != 1 or out in graph.outputs or users[0] in taken or not _is_relu(graph, users[0]):
            continue
        if _single_kind(graph, index, chip) is Kind.INT8:
            found.append(Layer([index, users[0]], Kind.INT8, f"{node.op_type}+{graph.nodes[users[0]].op_type}"))
    return found


def _is_relu(graph: GraphView, index: int) -> bool:
    """A Relu, or a Clip whose lower bound is 0 (tpu-mlir's Relu with a relu_limit)."""
    node = graph.nodes[index]
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    if len(node.input) > 1 and node.input[1]:
        low = graph.constants.get(node.input[1])
        return low is not None and float(np.ravel(low)[0]) == 0.0
    return float(_attr(node, "min", float("-inf"))) == 0.0


def _lut_layers(graph: GraphView, taken: Mapping[int, Layer], chip: str) -> list[Layer]:
    """Element-wise functions of a single tensor x (with scalar constants): one lookup table
    from int8 x to the int8 result, whatever number of ONNX nodes spell it."""
    found = []
    used: set[int] = set(taken)
    for source in _tensors_in_order(graph):
        if source in graph.constants:
            continue
        region: list[int] = []
        inside = {source}
        grew = True
        while grew:
            grew = False
            for tensor in list(inside):
                for user in graph.consumers.get(tensor, []):
                    if user in used or user in region or not _lut_node(graph, user, inside):
                        continue
                    region.append(user)
                    inside.update(o for o in graph.nodes[user].output if o)
                    grew = True
        if not region:
            continue
        remaining = set(region)
        for sink in sorted(region, reverse=True):
            if sink not in remaining:
                continue
            members = _ancestors_within(graph, sink, remaining)
            interior = [o for i in members for o in graph.nodes[i].output if i != sink]
            if all(graph.only_used_by(t, members) for t in interior):
                found.append(Layer(sorted(members), Kind.INT8,
                                   "lut(" + ",".join(graph.nodes[i].op_type for i in sorted(members)) + ")"))
                used.update(members)
                remaining -= members
    return found


def _lut_node(graph: GraphView, index: int, inside: set[str]) -> bool:
    node = graph.nodes[index]
    if node.op_type not in UNARY or len(node.output) != 1:
        return False
    for name in node.input:
        if not name:
            continue
        if name in graph.constants:
            if not graph.is_scalar(name):
                return False
        elif name not in inside:
            return False
    return node.output[0] in graph.float_tensors


def _ancestors_within(graph: GraphView, sink: int, region: set[int]) -> set[int]:
    members, stack = set(), [sink]
    while stack:
        index = stack.pop()
        if index in members:
            continue
        members.add(index)
        for name in graph.nodes[index].input:
            parent = graph.producer.get(name)
            if parent is not None and parent in region:
                stack.append(parent)
    return members


def _tensors_in_order(graph: GraphView) -> list[str]:
    names = [i.name for i in graph.model.graph.input]
    for node in graph.nodes:
        names += [o for o in node.output if o]
    return names


def _single_kind(graph: GraphView, index: int, chip: str) -> Kind:
    node = graph.nodes[index]
    op = node.op_type
    if not any(o in graph.float_tensors for o in node.output) or all(
            not i or i in graph.constants for i in node.input):
        return Kind.FLOAT  # integer/shape arithmetic, or folded at compile time
    if op == "Resize" and _attr(node, "mode", b"nearest") == b"nearest":
        return Kind.PASS
    variables = graph.variable_inputs(index)
    if op in ("Sub", "Div") and len(variables) == 1:
        return Kind.INT8  # a constant operand: an Add/Mul with weights on the target
    if op in PASS_THROUGH:
        return Kind.PASS
    if op in UNARY and len(variables) == 1:
        return Kind.INT8
    spatial = op == "GlobalAveragePool" or (op == "ReduceMean" and _spatial_axes(graph, node))
    weight_rank = None
    if op == "MatMul":
        constant = [i for i in node.input if i in graph.constants]
        weight_rank = len(graph.shapes.get(constant[0], [])) if constant else None
        if weight_rank == 2:
            rank = len(graph.shapes.get(node.input[0], []) or [])
            weight_rank = 2 if rank <= 2 else 3  # BM1684 runs only the 2-D (Gemm) form in int8
    return op_kind(op, chip, spatial_reduce=spatial, weight_rank=weight_rank)


def _spatial_axes(graph: GraphView, node: Any) -> bool:
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in graph.constants:
        value = graph.constants[node.input[1]]
        axes = None if value is None else [int(a) for a in np.ravel(value)]
    rank = len(graph.shapes.get(node.input[0], []) or [])
    if axes is None or rank != 4:
        return False
    return sorted(a % 4 for a in axes) == [2, 3]


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# --- step 2: the plan ------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorQuant:
    """Quantization of one tensor: value = (q - zero_point) * scale, q in int8 or uint8;
    zero_point is 0 (symmetric) except for the target's asymmetric int8 tensors."""

    scale: float
    unsigned: bool
    zero_point: int = 0


@dataclass
class Plan:
    """What `apply` does, and what a log or a report says about it."""

    layers: list[Layer]
    tensors: dict[str, TensorQuant] = field(default_factory=dict)
    weights: dict[str, int | None] = field(default_factory=dict)  # weight -> channel axis (None: per tensor)
    kept_float: dict[str, str] = field(default_factory=dict)  # tensor -> why it was not quantized

    def float_layers(self, graph: GraphView) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind is Kind.FLOAT
                and any(o in graph.float_tensors for i in layer.nodes for o in graph.nodes[i].output)]


def plan(graph: GraphView, table: Mapping[str, tuple[float, float, float]], chip: str,
         fp32_nodes: set[str] = frozenset(), per_channel: bool = True, asymmetric: bool = False) -> Plan:
    """Which tensors and weights to quantize, with which scales. `asymmetric` (the recipe's
    int8.asymmetric, tpu-mlir's `model_deploy --asymmetric`): every activation gets a zero point
    over its calibrated min..max, unclipped, as tpu-mlir imports the table then; weights stay
    symmetric."""
    grouped = layers(graph, chip, fp32_nodes)
    result = Plan(grouped)
    wanted: dict[str, str] = {}  # tensor -> op type that bounds it ('' when none)
    for layer in grouped:
        if layer.kind is not Kind.INT8:
            continue
        members = set(layer.nodes)
        for index in layer.nodes:
            node = graph.nodes[index]
            for name in node.input:
                parent = graph.producer.get(name)
                if name and name not in graph.constants and (parent is None or parent not in members) \
                        and name in graph.float_tensors:
                    wanted.setdefault(name, _bounding_op(graph, name))
            for name in node.output:
                if name and name in graph.float_tensors and not graph.only_used_by(name, members):
                    wanted.setdefault(name, node.op_type if node.op_type in SATURATING else "")
            if node.op_type in WEIGHTED and len(node.input) > 1 and node.input[1] in graph.constants \
                    and graph.constants[node.input[1]] is not None:
                result.weights[node.input[1]] = weight_axis(graph, node, per_channel)
    kinds = {index: layer.kind for layer in grouped for index in layer.nodes}
    lut_asymmetric = _asymmetric_tensors(graph, grouped, chip)
    table = shared_table(graph, table, chip)
    for name in _tensors_in_order(graph):
        if name not in wanted:
            continue
        if _on_grid(graph, name, kinds, result.tensors):
            continue  # a copy or selection of values already quantized: on their grid
        stats = table.get(name)
        if stats is None:
            result.kept_float[name] = "no calibration statistics"
            continue
        threshold, low, high = (float(v) for v in stats)
        if not (high > low):
            result.kept_float[name] = f"constant during calibration ({low + 0.0:g})"
            continue
        if asymmetric:
            # tpu-mlir's ImportCalibrationTable (`getMinMax`) gives every tensor its table min..max
            # under --asymmetric: the method's threshold is not used. The range holds zero, so the
            # zero point is a code of the int8 grid
            result.tensors[name] = asymmetric_quant(min(low, 0.0), max(high, 0.0))
            continue
        if wanted[name]:  # a bounded op's whole range is meaningful: no clipping
            threshold = max(abs(low), abs(high))
        unsigned = low >= 0.0
        if name in lut_asymmetric and not unsigned:
            # the table holds the range tpu-mlir gives it (`calib.methods.asymmetric_range`)
            result.tensors[name] = asymmetric_quant(low, high)
            continue
        result.tensors[name] = TensorQuant(threshold / (255.0 if unsigned else 127.0), unsigned)
    return result


# --- thresholds the target shares between tensors --------------------------------------------
# tpu-mlir's lowering (`lib/Conversion/TopToTpu/TopToTpuPass.cpp`, `ConvertTopToTpu::
# calibration_process`) rewrites the calibrated ranges before it quantizes: `BackwardMutiInSingleOut`
# gives the inputs of a Concat/Min/Max the output's range, `BackwardCalibartion` gives the input of
# a Relu/MaxPool/DepthToSpace/Abs (PRelu/LeakyRelu: keeping the input's sign) the output's range,
# `BackwardAddThToMuls` (BM1684X) gives Mul outputs summed by an Add the Add's range, each only when
# that input has no other user; then `ForwardCalibartion` gives a Relu/MaxPool/LeakyRelu/PRelu/Abs
# output its input's range. A range set backwards on a Reshape/Transpose/DepthToSpace output goes to
# its input too (`Backward`). Relu here includes Clip(0, x), which tpu-mlir imports as a Relu.
_BACKWARD = frozenset({"Relu", "MaxPool", "DepthToSpace", "Abs"})
_BACKWARD_KEEP_SIGN = frozenset({"LeakyRelu", "PRelu"})
_FORWARD = frozenset({"Relu", "MaxPool", "LeakyRelu", "PRelu", "Abs"})
_MULTI_IN = frozenset({"Concat", "Min", "Max"})
_RESHAPES = frozenset({"Reshape", "Transpose", "DepthToSpace"})
Row = tuple[float, float, float]


def output_sources(graph: GraphView) -> list[str]:
    """The graph outputs and the tensors whose int8 values they carry: back through the ops that
    only move values (a Flatten before the output holds its input's grid)."""
    found: list[str] = []
    pending = list(graph.outputs)
    while pending:
        name = pending.pop(0)
        if name in found:
            continue
        found.append(name)
        index = graph.producer.get(name)
        if index is not None and graph.nodes[index].op_type in PASS_THROUGH and graph.nodes[index].input:
            pending.append(graph.nodes[index].input[0])
    return found


def shared_table(graph: GraphView, table: Mapping[str, Row], chip: str) -> dict[str, Row]:
    """The calibration table as the target sees it after sharing ranges (see above). A tensor a
    saturating op makes keeps its whole range (no clipping) before it is shared."""
    rows: dict[str, Row] = {}
    for name, row in table.items():
        threshold, low, high = (float(v) for v in row)
        rows[name] = (max(abs(low), abs(high)), low, high) if _bounding_op(graph, name) else (threshold, low, high)
    for index, node in enumerate(graph.nodes):
        if node.op_type in _MULTI_IN:
            _share_multi_input(graph, rows, index)
    for index, node in enumerate(graph.nodes):
        op = _range_op(graph, index)
        if op in _BACKWARD | _BACKWARD_KEEP_SIGN and node.input and node.output[0] in rows \
                and node.input[0] in rows and _single_use(graph, node.input[0]):
            threshold, low, high = rows[node.output[0]]
            if op in _BACKWARD_KEEP_SIGN:
                low = rows[node.input[0]][1]
            _set_backward(graph, rows, node.input[0], (threshold, low, high))
    if chip == "BM1684X":
        for node in graph.nodes:
            ins = [i for i in node.input if i]
            if node.op_type == "Add" and node.output[0] in rows and all(
                    i in rows and _producer_op(graph, i, ("Mul",)) is not None and _single_use(graph, i) for i in ins):
                for name in ins:
                    _set_backward(graph, rows, name, rows[node.output[0]])
    for index, node in enumerate(graph.nodes):
        if _range_op(graph, index) in _FORWARD and node.input and node.input[0] in rows and node.output[0] in rows:
            rows[node.output[0]] = rows[node.input[0]]
    return rows


def _range_op(graph: GraphView, index: int) -> str:
    """The op type as tpu-mlir imports it: a Clip from 0 is a Relu (with a relu_limit)."""
    return "Relu" if _is_relu(graph, index) else graph.nodes[index].op_type


def _single_use(graph: GraphView, tensor: str) -> bool:
    return tensor not in graph.outputs and len(graph.consumers.get(tensor, [])) == 1


def _set_backward(graph: GraphView, rows: dict[str, Row], tensor: str, row: Row) -> None:
    rows[tensor] = row
    parent = _producer_op(graph, tensor, tuple(_RESHAPES))
    if parent is not None and graph.nodes[parent].input[0] in rows:
        rows[graph.nodes[parent].input[0]] = row


def _share_multi_input(graph: GraphView, rows: dict[str, Row], index: int) -> None:
    """`BackwardMutiInSingleOut`: inputs used only here (or by MaxPools too) take the output's range;
    a Concat of signed and unsigned inputs keeps them apart, identical inputs set the output's."""
    node = graph.nodes[index]
    ins = graph.variable_inputs(index)
    out = node.output[0]
    if len(ins) < 2 or out not in rows or any(i not in rows for i in ins):
        return
    for name in ins:
        others = [u for u in graph.consumers.get(name, []) if u != index]
        if name in graph.outputs or any(graph.nodes[u].op_type != "MaxPool" for u in others):
            return
    signs = {rows[i][1] < 0 for i in ins}
    if node.op_type == "Concat" and len(signs) > 1:
        return
    if len({(rows[i][0], rows[i][1] < 0) for i in ins}) == 1:
        rows[out] = rows[ins[0]]
        return
    for name in ins:
        _set_backward(graph, rows, name, rows[out])


def asymmetric_quant(low: float, high: float) -> TensorQuant:
    """int8 with a zero point over [low, high] (low < 0), as tpu-mlir's getScaleAndZeroPoint."""
    scale = (high - low) / 255.0
    zero = int(np.clip(np.round(-128.0 - low / scale), -128, 127))
    return TensorQuant(scale, False, zero)


def asymmetric_tensors(graph: GraphView, chip: str) -> set[str]:
    """The tensors the target quantizes asymmetrically (on BM1684X: SiLU/GELU outputs read only
    by Conv/MatMul), which calibration gives tpu-mlir's percentile range."""
    return _asymmetric_tensors(graph, layers(graph, chip), chip)


def _asymmetric_tensors(graph: GraphView, grouped: list[Layer], chip: str) -> set[str]:
    """Outputs of the LUT layers that the target quantizes asymmetrically (`targets.asymmetric_output`)."""
    found = set()
    for layer in grouped:
        if layer.kind is not Kind.INT8 or not layer.label.startswith("lut("):
            continue
        function = lut_function([graph.nodes[i].op_type for i in layer.nodes])
        members = set(layer.nodes)
        for index in layer.nodes:
            for name in graph.nodes[index].output:
                users = [u for u in graph.consumers.get(name, []) if u not in members]
                if name in graph.outputs or not users:
                    continue
                if asymmetric_output(function, [graph.nodes[u].op_type for u in users], chip) and all(
                        graph.nodes[u].input[0] == name for u in users):
                    found.add(name)
    return found


def _on_grid(graph: GraphView, tensor: str, kinds: Mapping[int, Kind], quantized: Mapping[str, TensorQuant]) -> bool:
    """Whether `tensor` is made by pass-through ops from a quantized tensor."""
    while True:
        parent = graph.producer.get(tensor)
        if parent is None or kinds.get(parent) is not Kind.PASS or not graph.nodes[parent].input:
            return False
        tensor = graph.nodes[parent].input[0]
        if tensor in quantized:
            return True


def _bounding_op(graph: GraphView, tensor: str) -> str:
    parent = graph.producer.get(tensor)
    if parent is None:
        return ""
    op = graph.nodes[parent].op_type
    return op if op in SATURATING else ""


def weight_axis(graph: GraphView, node: Any, per_channel: bool) -> int | None:
    """Conv weights per output channel (tpu-mlir's default); Gemm/MatMul per tensor (its default
    `matmul_perchannel=False`)."""
    if not per_channel:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose" and _attr(node, "group", 1) == 1:
        return 1
    return None


# --- step 3: the QDQ model ---------------------------------------------------------------------
def apply(graph: GraphView, the_plan: Plan) -> Any:
    """A copy of the model with QuantizeLinear/DequantizeLinear where `the_plan` says.

    Consumers read `<tensor>_DequantizeLinear_Output`; a quantized graph output keeps its name
    (its producer writes `<tensor>_float`, an Identity copies the dequantized value out).
    """
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    outputs = set(graph.outputs)
    inits: list[Any] = []
    first: list[Any] = [_quantized_weight(name, np.asarray(graph.constants[name], dtype=np.float32), axis, inits)
                        for name, axis in the_plan.weights.items()]
    after: dict[str, list[Any]] = {}
    for name, quant in the_plan.tensors.items():
        source = f"{name}_float" if name in outputs else name
        nodes = _qdq_nodes(name, source, quant, inits)
        if name in outputs:
            nodes.append(helper.make_node("Identity", [name + DEQUANT_SUFFIX], [name], name=f"{name}_output"))
        (after.setdefault(source, []) if name in graph.producer else first).extend(nodes)
    quantized = set(the_plan.tensors) | set(the_plan.weights)
    ordered = list(first)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in quantized:
                node.input[i] = name + DEQUANT_SUFFIX
        for i, name in enumerate(node.output):
            if name in outputs and name in the_plan.tensors:
                node.output[i] = f"{name}_float"
        ordered.append(node)
        for out in node.output:
            ordered += after.pop(out, [])
    del g.node[:]
    g.node.extend(ordered)
    used = {name for node in g.node for name in node.input}
    unused = set(the_plan.weights) - used
    keep = [init for init in g.initializer if init.name not in unused]
    del g.initializer[:]
    g.initializer.extend(keep + inits)
    inputs = [inp for inp in g.input if inp.name not in unused]
    del g.input[:]
    g.input.extend(inputs)
    return model


def _qdq_nodes(name: str, source: str, quant: TensorQuant, inits: list[Any]) -> list[Any]:
    from onnx import helper, numpy_helper

    dtype = np.uint8 if quant.unsigned else np.int8
    inits += [numpy_helper.from_array(np.asarray(quant.scale, dtype=np.float32), f"{name}_scale"),
              numpy_helper.from_array(np.asarray(quant.zero_point, dtype=dtype), f"{name}_zero_point")]
    args = [f"{name}_scale", f"{name}_zero_point"]
    return [helper.make_node("QuantizeLinear", [source, *args], [name + QUANT_SUFFIX], name=f"{name}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [name + QUANT_SUFFIX, *args], [name + DEQUANT_SUFFIX],
                             name=f"{name}_DequantizeLinear")]


def weight_codes(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of a weight and their scale (per tensor, or per slice of `axis`)."""
    if axis is None:
        scale = np.asarray(max(float(np.abs(weight).max()), 1e-12) / 127.0, dtype=np.float32)
        return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    scale = (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return np.clip(np.rint(weight / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def fake_quant_weight(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """The float value of a weight's int8 codes (what the int8 model computes with)."""
    q, scale = weight_codes(weight, axis)
    if axis is not None:
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    return (q.astype(np.float32) * scale).astype(np.float32)


def _quantized_weight(name: str, weight: np.ndarray, axis: int | None, inits: list[Any]) -> Any:
    """int8 weight + scale (+ axis) -> a DequantizeLinear producing `name`_DequantizeLinear_Output."""
    from onnx import helper, numpy_helper

    q, scale = weight_codes(weight, axis)
    zero = np.zeros(scale.shape, dtype=np.int8)
    inits += [numpy_helper.from_array(q, f"{name}_quantized"), numpy_helper.from_array(scale, f"{name}_scale"),
              numpy_helper.from_array(zero, f"{name}_zero_point")]
    kwargs = {"axis": axis} if axis is not None else {}
    return helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                            [name + DEQUANT_SUFFIX], name=f"{name}_DequantizeLinear", **kwargs)
