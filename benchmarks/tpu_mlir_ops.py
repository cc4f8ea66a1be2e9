"""Which ops tpu-mlir runs in int8 and which in float, per chip: the source of bmbuild/calib/targets.py.

Builds a probe ONNX graph (one node of each op type of interest, plus the decomposed HardSwish,
GELU and LayerNorm that exporters write), then with the tpu-mlir environment bmbuild uses:
model_transform, run_calibration (kl, 8 random samples) and model_deploy --quantize INT8
--not_gen_bmodel for bm1684x and bm1684, and prints the result type of every op of the lowered
`*_int8_sym_tpu.mlir` (INT8/UINT8, F16, F32) with the ONNX node it came from.

    python benchmarks/tpu_mlir_ops.py [--work /tmp/tpu_mlir_ops]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def probe_model(folder: Path) -> None:
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    def W(name, shape, s=0.2):
        inits.append(nh.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)); return name
    def C(name, value):
        inits.append(nh.from_array(np.asarray(value, dtype=np.float32), name)); return name
    def I(name, value):
        inits.append(nh.from_array(np.asarray(value, dtype=np.int64), name)); return name
    def N(op, ins, out, name=None, **kw):
        nodes.append(h.make_node(op, ins, [out], name=name or out, **kw)); return out
    # stem
    N("Conv", ["x", W("w1", (16, 16, 3, 3)), W("b1", (16,))], "conv", pads=[1]*4, kernel_shape=[3, 3])
    N("Relu", ["conv"], "relu")
    N("Clip", ["conv", C("zero", 0.0), C("six", 6.0)], "clip6")
    N("Sigmoid", ["conv"], "sigmoid")
    N("HardSigmoid", ["conv"], "hardsigmoid", alpha=0.2, beta=0.5)
    N("HardSwish", ["conv"], "hardswish")
    N("Tanh", ["conv"], "tanh")
    N("LeakyRelu", ["conv"], "leakyrelu", alpha=0.1)
    N("PRelu", ["conv", W("slope", (16, 1, 1), 0.1)], "prelu")
    N("Exp", [N("Mul", ["conv", C("tenth", 0.1)], "mulconst")], "exp")
    N("Softplus", ["conv"], "softplus")
    N("Abs", ["conv"], "abs")
    # decomposed hardswish (paddle2onnx style): x * clip(x + 3, 0, 6) / 6
    N("Add", ["conv", C("three", 3.0)], "dhs_add")
    N("Clip", ["dhs_add", "zero", "six"], "dhs_clip")
    N("Div", ["dhs_clip", C("six_d", 6.0)], "dhs_div")
    N("Mul", ["conv", "dhs_div"], "dhs_mul")
    # elementwise binaries of two activations
    N("Add", ["relu", "sigmoid"], "add2")
    N("Mul", ["relu", "tanh"], "mul2")
    N("Sub", ["relu", "tanh"], "sub2")
    N("Div", ["relu", N("Add", ["sigmoid", C("one", 1.0)], "addconst")], "div2")
    N("Max", ["relu", "tanh"], "max2")
    N("Min", ["relu", "tanh"], "min2")
    # pools
    N("MaxPool", ["relu"], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    N("AveragePool", ["relu"], "avgpool", kernel_shape=[2, 2], strides=[2, 2])
    N("GlobalAveragePool", ["relu"], "gap")
    N("ReduceMean", ["relu"], "reducemean", axes=[2, 3], keepdims=1)
    N("ReduceMax", ["relu"], "reducemax", axes=[2, 3], keepdims=1)
    N("Concat", ["relu", "hardswish"], "concat", axis=1)
    # SE block: gap -> conv -> relu -> conv -> hardsigmoid -> mul
    N("Conv", ["gap", W("wse1", (4, 16, 1, 1)), W("bse1", (4,))], "se_conv1", kernel_shape=[1, 1])
    N("Relu", ["se_conv1"], "se_relu")
    N("Conv", ["se_relu", W("wse2", (16, 4, 1, 1)), W("bse2", (16,))], "se_conv2", kernel_shape=[1, 1])
    N("HardSigmoid", ["se_conv2"], "se_hsig", alpha=0.2, beta=0.5)
    N("Mul", ["relu", "se_hsig"], "se_mul")
    N("ConvTranspose", ["maxpool", W("wt", (16, 8, 2, 2))], "convtranspose", strides=[2, 2], kernel_shape=[2, 2])
    N("Resize", ["maxpool", "", C("scales", [1, 1, 2, 2])], "resize", mode="nearest")
    N("Pad", ["relu", I("pads", [0, 0, 1, 1, 0, 0, 1, 1])], "pad")
    N("BatchNormalization", ["sigmoid", W("bn_s", (16,), 1.0), W("bn_b", (16,), 0.1), W("bn_m", (16,), 0.1), C("bn_v", np.ones(16))], "batchnorm")
    N("InstanceNormalization", ["relu", W("in_s", (16,), 1.0), W("in_b", (16,), 0.1)], "instancenorm")
    # sequence / transformer part: tokens [1, 64, 16]
    N("Reshape", ["maxpool", I("shape_tok", [1, 16, 64])], "reshape")
    N("Transpose", ["reshape"], "tokens", perm=[0, 2, 1])
    N("LayerNormalization", ["tokens", W("ln_s", (16,), 1.0), W("ln_b", (16,), 0.1)], "layernorm", axis=-1)
    # decomposed layernorm (opset < 17 export)
    N("ReduceMean", ["tokens"], "dln_mean", axes=[-1], keepdims=1)
    N("Sub", ["tokens", "dln_mean"], "dln_sub")
    N("Pow", ["dln_sub", C("two", 2.0)], "dln_pow")
    N("ReduceMean", ["dln_pow"], "dln_var", axes=[-1], keepdims=1)
    N("Add", ["dln_var", C("eps", 1e-5)], "dln_addeps")
    N("Sqrt", ["dln_addeps"], "dln_sqrt")
    N("Div", ["dln_sub", "dln_sqrt"], "dln_div")
    N("Mul", ["dln_div", W("dln_g", (16,), 1.0)], "dln_mul")
    N("Add", ["dln_mul", W("dln_b", (16,), 0.1)], "dln_out")
    N("MatMul", ["layernorm", W("wq", (16, 16))], "matmul_w")
    N("Add", ["matmul_w", W("bq", (16,))], "matmul_bias")
    N("MatMul", ["dln_out", W("wk", (16, 16))], "matmul_k")
    N("Transpose", ["matmul_k"], "k_t", perm=[0, 2, 1])
    N("MatMul", ["matmul_bias", "k_t"], "matmul_qk")
    N("Mul", ["matmul_qk", C("scale", 0.25)], "qk_scaled")
    N("Softmax", ["qk_scaled"], "softmax", axis=-1)
    N("MatMul", ["softmax", "tokens"], "matmul_av")
    N("Div", ["matmul_av", C("sqrt2", 1.41421356)], "gelu_div")
    N("Erf", ["gelu_div"], "gelu_erf")
    N("Add", ["gelu_erf", C("one_g", 1.0)], "gelu_add")
    N("Mul", ["matmul_av", "gelu_add"], "gelu_mul")
    N("Mul", ["gelu_mul", C("half", 0.5)], "gelu_out")
    N("Slice", ["gelu_out", I("st", [0]), I("en", [32]), I("ax", [1])], "slice")
    N("Flatten", [N("ReduceMean", ["gelu_out"], "tok_mean", axes=[1], keepdims=0)], "flatten", axis=1)
    N("Gemm", ["flatten", W("wfc", (10, 16)), W("bfc", (10,))], "gemm", transB=1)
    N("Log", [N("Add", ["softplus", C("one_l", 1.0)], "addlog")], "log")
    N("Sqrt", ["relu"], "sqrt")
    N("Pow", ["tanh", C("two_p", 2.0)], "pow")
    # GRU over tokens [seq=64, batch=1, 16]
    N("Transpose", ["tokens"], "seq", perm=[1, 0, 2])
    outs = ["clip6", "hardsigmoid", "dhs_mul", "add2", "mul2", "sub2", "div2", "max2", "min2", "avgpool", "reducemean",
            "reducemax", "concat", "se_mul", "convtranspose", "resize", "pad", "batchnorm", "instancenorm", "leakyrelu",
            "prelu", "exp", "abs", "softmax", "gemm", "slice", "log", "sqrt", "pow", "matmul_qk"]
    g = h.make_graph(nodes, "probe", [h.make_tensor_value_info("x", TP.FLOAT, [1, 16, 16, 16])],
                     [h.make_empty_tensor_value_info(o) for o in outs], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], producer_name="probe")
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)
    vi = {v.name: v for v in m.graph.value_info}
    del m.graph.output[:]
    m.graph.output.extend([vi[o] for o in outs])
    onnx.checker.check_model(m)
    onnx.save(m, str(folder / "probe.onnx"))
    os.makedirs(folder / "cali", exist_ok=True)
    for i in range(8):
        np.savez(folder / "cali" / f"c{i}.npz", x=rng.standard_normal((1, 16, 16, 16)).astype(np.float32))


def run(folder: Path) -> None:
    from bmbuild.toolchains.tpu_mlir_env import locate

    env = locate()
    clean = dict(os.environ, PYTHONPATH="")

    def tool(*args: str) -> None:
        with open(folder / f"log_{args[0]}.txt", "a") as log:
            subprocess.run([env.tool(args[0]), *args[1:]], cwd=folder, env=clean, stdout=log,
                           stderr=subprocess.STDOUT, check=True)

    tool("model_transform", "--model_name", "probe", "--model_def", "probe.onnx", "--input_shapes",
         "[[1,16,16,16]]", "--mlir", "probe.mlir")
    tool("run_calibration", "probe.mlir", "--dataset", "cali", "--input_num", "8", "-o", "probe_cali_table")
    for chip in ("bm1684x", "bm1684"):
        tool("model_deploy", "--mlir", "probe.mlir", "--quantize", "INT8", "--calibration_table", "probe_cali_table",
             "--chip", chip, "--model", f"probe_{chip}.bmodel", "--not_gen_bmodel")


def lowered(path: Path) -> list[tuple[str, str, str]]:
    """(tpu op, result type, location name) of every op of a lowered MLIR."""
    text = path.read_text()
    aliases = dict(re.findall(r'^(#loc\d+)\s*=\s*loc\("([^"]*)"\)', text, re.M))
    rows = []
    for line in text.splitlines():
        op = re.search(r'=\s*"tpu\.(\w+)"', line)
        if not op or op.group(1) in ("Weight", "None"):
            continue
        result = line.rsplit("->", 1)[-1]
        kind = ("INT8" if "quant.uniform<i8" in result else "UINT8" if "quant.uniform<u8" in result
                else "F16" if "f16" in result else "F32" if "f32" in result else "other")
        loc = re.search(r'loc\((#loc\d+|"[^"]*")\)\s*$', line)
        name = aliases.get(loc.group(1), loc.group(1).strip('"')) if loc else "?"
        rows.append((op.group(1), kind, name))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/tpu_mlir_ops")
    folder = Path(parser.parse_args().work)
    folder.mkdir(parents=True, exist_ok=True)
    probe_model(folder)
    run(folder)
    for chip in ("bm1684x", "bm1684"):
        print(f"== {chip}")
        for op, kind, name in lowered(folder / f"probe_{chip}_int8_sym_tpu.mlir"):
            if op != "Cast":
                print(f"  {op:14s} {kind:6s} {name}")


if __name__ == "__main__":
    main()
