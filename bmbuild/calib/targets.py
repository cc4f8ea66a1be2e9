"""Which ONNX operations BM1684 and BM1684X run in int8, and which stay in float.

Source: tpu-mlir 1.30.2 (`TPU-MLIR v1.30.2-20260831`), observed rather than guessed. Its package
declares an INT8 and an F32 lowering for nearly every op (`include/tpu_mlir/Conversion/TopToTpu/
LoweringBM1684.h`, `LoweringBM1684X.h`); which one runs is decided in compiled C++, so the lists
below come from lowering a probe graph (`benchmarks/tpu_mlir_ops.py`: one node of each op type,
plus the decomposed HardSwish, GELU and LayerNorm that exporters write) with
`model_transform`, `run_calibration` (kl) and `model_deploy --quantize INT8 --not_gen_bmodel
--chip bm1684x|bm1684`, and reading each op's result type in the lowered `*_int8_sym_tpu.mlir`:

| op (ONNX)                                        | BM1684X      | BM1684        |
|--------------------------------------------------|--------------|---------------|
| Conv, ConvTranspose, Gemm, BatchNormalization    | int8         | int8          |
| Add/Mul/Max/Min of two tensors, PRelu, Concat    | int8         | int8          |
| MaxPool, AveragePool, Pad, Resize, Reshape, ...  | int8         | int8          |
| unary functions (Relu, Clip, Sigmoid, HardSwish, | int8 (LUT)   | int8 (LUT)    |
|   Tanh, Exp, Log, Sqrt, GELU, x*const, x+const)  |              |               |
| GlobalAveragePool, ReduceMean/Max over H,W       | int8         | F32           |
| MatMul (with weights or of two tensors)          | int8         | F32 (a 2-D x weight MatMul, i.e. Gemm, is int8) |
| Softmax, LayerNorm, ReduceMean over other axes   | F16          | F32           |
| Sub of two tensors                               | F16          | F32           |
| Div of two tensors, InstanceNorm                 | F32          | F32           |

Before lowering, tpu-mlir fuses patterns into single ops whose inner tensors are never
quantized: Conv+BatchNorm, Conv/MatMul + bias + Relu, the decomposed HardSigmoid/HardSwish
(Add 3, Clip 0..6, Div 6, Mul), GELU (Div, Erf, Add, Mul, Mul) and LayerNorm (ReduceMean, Sub,
Pow, ReduceMean, Add, Sqrt, Div, Mul, Add). Ops it could not lower in INT8 for the probe (Erf
alone on BM1684) and recurrent layers stay in float here. At opset 17 the exporter writes a
LayerNorm as one LayerNormalization node: float on both chips, like its nine-node form.

Activations are symmetric int8 (uint8 when never negative), with one exception on BM1684X:
tpu-mlir's `run_calibration --part_asymmetric` (tpu-mlir 1.30.2, `calibration/kld_calibrator.py`
`choose_asym_op`; `ImportCalibration.cpp` sets `output_asym` on the op and `input_asym` on its
users) quantizes the output of a SiLU or GELU whose every user is a Conv or MatMul asymmetrically
(int8 with a zero point, over the tensor's min..max at percentile 99.99 and more, not kl:
`bmbuild.calib.methods.asymmetric_range`). Those outputs reach only a few tenths
below zero, and symmetric int8 spends half its levels on that sliver. BM1684 has no asymmetric
int8. `asymmetric_output` says which ops qualify. The flag is off by default in tpu-mlir
(`run_calibration.py:73`, store_true); bmbuild's tpu-mlir toolchain passes it on BM1684X, so both
toolchains quantize these tensors alike (`TpuMlirToolchain.calibration`).
"""

from __future__ import annotations

from enum import Enum

CHIPS = ("BM1684", "BM1684X")
# chips with asymmetric int8 activations (tpu-mlir model_deploy --asymmetric); BM1684 has none
ASYMMETRIC_CHIPS = frozenset({"BM1684X"})


class Kind(Enum):
    """How the target runs an op: int8 in and out, in float, or on whatever its input holds."""

    INT8 = "int8"
    FLOAT = "float"
    PASS = "pass"  # moves or selects values: its output is on its input's int8 grid


# ops that only move, copy or select values: no quantization of their own
PASS_THROUGH = frozenset({
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather",
    "Identity", "Dropout", "MaxPool", "GlobalMaxPool", "Tile", "Expand", "DepthToSpace",
    "SpaceToDepth", "ReduceMax", "ReduceMin", "Pad",
})
# element-wise functions of one tensor (with scalar constants): tpu-mlir runs them as lookup tables
UNARY = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Relu", "Clip", "LeakyRelu", "Elu", "Selu",
    "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal",
    "Neg", "Abs", "Erf", "Softplus", "Softsign", "Mish", "Gelu", "Sin", "Cos",
})
# int8 on both chips (given weights or two tensor inputs)
INT8_BOTH = frozenset({
    "Conv", "ConvTranspose", "Gemm", "BatchNormalization", "Add", "Mul", "Max", "Min", "Sum",
    "PRelu", "LeakyRelu", "Concat", "AveragePool", "Resize", "Upsample",
})
# tensors these ops produce are bounded by the op itself: their full range is kept (no clipping)
SATURATING = frozenset({"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "Clip", "Erf", "Softsign"})
# the ops whose weights are quantized (the rest of their constant inputs stay float, as biases)
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# the users that take an asymmetric input (tpu-mlir's `input_asym`: Conv and MatMul, Gemm's top form)
ASYMMETRIC_USERS = frozenset({"Conv", "Gemm", "MatMul"})


def op_kind(op_type: str, chip: str, *, spatial_reduce: bool = False, weight_rank: int | None = None) -> Kind:
    """The kind of one node on `chip`.

    `spatial_reduce`: a ReduceMean/GlobalAveragePool over the H and W axes of an NCHW tensor
    (tpu-mlir lowers it as a pool). `weight_rank`: for MatMul, the rank of its constant
    operand, None when both operands are computed tensors.
    """
    if chip not in CHIPS:
        raise ValueError(f"unknown target {chip!r} (one of {', '.join(CHIPS)})")
    if op_type in PASS_THROUGH:
        return Kind.PASS
    if op_type in INT8_BOTH:
        return Kind.INT8
    if op_type in ("GlobalAveragePool", "ReduceMean") and spatial_reduce:
        return Kind.INT8 if chip == "BM1684X" else Kind.FLOAT
    if op_type == "MatMul":
        if chip == "BM1684X" or weight_rank == 2:
            return Kind.INT8
        return Kind.FLOAT
    return Kind.FLOAT


def lut_function(op_types: list[str]) -> str | None:
    """The activation a lookup-table layer computes, as tpu-mlir names its fused op, from the
    ONNX ops that spell it: SiLU (x * Sigmoid(x)) or GELU (Gelu, the Erf form or the Tanh form)."""
    ops = set(op_types)
    if "Gelu" in ops or "Erf" in ops or {"Tanh", "Pow"} <= ops:
        return "GELU"
    if ops == {"Sigmoid", "Mul"} and len(op_types) == 2:
        return "SiLU"
    return None


def asymmetric_output(function: str | None, user_ops: list[str], chip: str) -> bool:
    """Whether the target quantizes this LUT's output asymmetrically (see the module docstring)."""
    return (chip == "BM1684X" and function in ("SiLU", "GELU") and bool(user_ops)
            and all(op in ASYMMETRIC_USERS for op in user_ops))
