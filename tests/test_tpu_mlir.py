"""The tpu-mlir toolchain with the REAL compiler: a tiny classifier through every stage for BM1684X and
BM1684, bmodels run on tpu-mlir's cmodel, caching, --dry-run, a model tpu-mlir rejects, and the
environment (installed once per machine in the shared toolchains dir, found, or missing).

The environment is installed by a session fixture into the shared toolchains dir (not the per-test
cache), so the first run on a machine pays ~2 minutes and later runs reuse it. Skipped only when no
CPython 3.10 exists here (tpu-mlir's extension modules are cpython-310).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import Int8Workspace, ws8  # noqa: E402,F401

from bmbuild.errors import ToolchainError  # noqa: E402
from bmbuild.toolchains import tpu_mlir_env  # noqa: E402
from bmbuild.toolchains.tpu_mlir import output_layer_names  # noqa: E402

SHARED_DIR = tpu_mlir_env.toolchains_dir()   # $BMBUILD_TOOLCHAINS_DIR or the user cache dir, read at import


def _python310() -> str | None:
    try:
        return tpu_mlir_env.find_python()
    except ToolchainError:
        return None


PYTHON310 = _python310()
needs_python310 = pytest.mark.skipif(
    PYTHON310 is None, reason="CPython 3.10 is not installed here (no python3.10 on PATH, none in pyenv): "
                              "tpu-mlir 1.30.2 runs only on 3.10")

TPU_RECIPE: dict[str, Any] = {
    "toolchain": "tpu-mlir",
    "batch_sizes": [1, 2],
    "calibration": {"samples": 8, "method": "minmax"},
    "int8": {"cmp_samples": 4, "cmodel_samples": 3},
}
MEAN_MODEL = '''
import torch


class Mean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def mean_model():
    return Mean()
'''
SILU_MODEL = '''
import torch
from torch import nn


class SiluNet(nn.Module):
    """A SiLU read only by a convolution (asymmetric on BM1684X), then ReLU, pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(nn.functional.silu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def silu_net():
    torch.manual_seed(0)
    return SiluNet().eval()
'''


@pytest.fixture(scope="session")
def tpu_env() -> Path:
    """The managed environment in the shared toolchains dir, installed once per machine (a no-op after)."""
    if PYTHON310 is None:
        pytest.skip("CPython 3.10 is not installed here: tpu-mlir 1.30.2 runs only on 3.10")
    patch = pytest.MonkeyPatch()
    patch.setenv(tpu_mlir_env.DIR_VAR, str(SHARED_DIR))
    patch.delenv(tpu_mlir_env.ENV_VAR, raising=False)
    try:
        env = tpu_mlir_env.install(PYTHON310, say=lambda text: None)
    finally:
        patch.undo()
    return env.bin_dir


@pytest.fixture
def tws(ws8: Int8Workspace, tpu_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Int8Workspace]:
    """An int8 workspace whose builds use the shared tpu-mlir environment."""
    monkeypatch.setenv(tpu_mlir_env.DIR_VAR, str(SHARED_DIR))
    monkeypatch.delenv(tpu_mlir_env.ENV_VAR, raising=False)
    yield ws8


def stage_metrics(ws: Int8Workspace, stage: str) -> dict[str, Any]:
    return ws.metrics(stage)


def bmodel_chip(ws: Int8Workspace, stage: str, label: str) -> str:
    return stage_metrics(ws, stage)["bmodels"][label]["chip"]


def input_shapes(info: dict[str, Any]) -> list[list[int]]:
    return [stage["inputs"][0]["shape"] for net in info["nets"] for stage in net["stages"]]


# --- every stage on the real compiler ---------------------------------------------------------------
@needs_python310
def test_bm1684x_every_stage_then_noop_then_only_int8_on_method_change(tws: Int8Workspace) -> None:
    recipe = tws.recipe(**TPU_RECIPE, target="BM1684X")
    code, out, err = tws.build(recipe)
    assert code == 0, out + err
    assert tws.report()["toolchain"] == "tpu-mlir"
    assert set(tws.outcomes().values()) == {"executed"}
    fp32, int8 = tws.stage_dir("compile_fp32"), tws.stage_dir("compile_int8")
    for folder in (fp32 / "1b.fp32.compilation", fp32 / "2b.fp32.compilation", int8 / "1b.compilation",
                   int8 / "2b.compilation"):
        assert (folder / "compilation.bmodel").stat().st_size > 1000
    # model_tool --info of every bmodel: the chip, and the combined bmodel holds both batch sizes
    assert bmodel_chip(tws, "compile_fp32", "1b") == "BM1684X" == bmodel_chip(tws, "compile_int8", "combined")
    assert input_shapes(stage_metrics(tws, "compile_int8")["bmodels"]["combined"]) == [[1, 3, 16, 16], [2, 3, 16, 16]]
    # bmbuild's own metrics from the cmodel: fp32 bmodel == torch; the int8 bmodel is close but not equal
    fp32_cmp, int8_cmp = stage_metrics(tws, "compile_fp32")["cmp"], stage_metrics(tws, "compile_int8")["cmp"]
    assert set(fp32_cmp) == set(int8_cmp) == {"b1/output", "b2/output"}
    assert all(v["cos"] > 0.99999 for v in fp32_cmp.values())
    assert all(0.9 < v["cos"] < 1.0 and 10 < v["sqnr"] < 100 and "top1" in v for v in int8_cmp.values())
    # per sample (mean and worst over the 3 held-out samples), whatever the batch size: b2 runs them
    # as a pair plus a padded single, b1 one by one, and both report the same numbers
    b1, b2 = int8_cmp["b1/output"], int8_cmp["b2/output"]
    assert b1["samples"] == b2["samples"] == 3
    for key in ("cos", "sqnr", "top1"):
        assert b1[key] == pytest.approx(b2[key], rel=1e-4)
    assert b1["worst"]["cos"] == pytest.approx(b2["worst"]["cos"], rel=1e-4) and b1["worst"]["cos"] <= b1["cos"]
    # per layer (report.json, as for the reference toolchain): the int8 tpu MLIR's tensors against
    # the top MLIR's, by name, on a held-out sample
    layers = {layer["name"]: layer for layer in stage_metrics(tws, "compile_int8")["layers"]}
    assert "output_Gemm" in layers and len(layers) >= 4
    assert {layer["op"] for layer in layers.values()} >= {"Relu", "Gemm"}     # Conv is fused into its Relu
    assert all(0.9 < layer["cos"] < 1.0 and layer["local_sqnr"] > 10 for layer in layers.values())
    # the int8 tpu MLIR's output is the bmodel's: its cos is one of the held-out samples' (the first)
    assert b1["worst"]["cos"] - 1e-6 <= layers["output_Gemm"]["cos"] <= 1.0
    assert stage_metrics(tws, "calibrate")["cali_method"] == "max"
    assert stage_metrics(tws, "quantize")["quantized_nodes"] > 0
    commands = (tws.root / "build" / "tiny8" / "logs" / "compile_int8.cmd").read_text()
    assert "model_deploy --mlir tiny8.mlir --quantize INT8 --chip bm1684x" in commands
    assert "model_runner" in commands and "model_tool --combine" in commands

    code, out, err = tws.build(recipe)
    assert code == 0 and set(tws.outcomes().values()) == {"up-to-date"}, out + err

    recipe = tws.recipe(**{**TPU_RECIPE, "calibration": {"samples": 8, "method": "kl"}}, target="BM1684X")
    code, out, err = tws.build(recipe)
    assert code == 0, out + err
    assert tws.outcomes() == {"trace": "up-to-date", "compile_fp32": "up-to-date", "calibrate": "executed",
                              "quantize": "executed", "compile_int8": "executed"}
    assert stage_metrics(tws, "calibrate")["cali_method"] == "kl"


@needs_python310
def test_bm1684_every_stage_with_a_layer_kept_in_float_and_eval(tws: Int8Workspace) -> None:
    import numpy as np

    from int8_support import write_npz

    write_npz(tws.recipes / "data" / "eval.npz", 12, seed=5, y=np.arange(12) % 10)
    recipe = tws.recipe(**{**TPU_RECIPE, "int8": {**TPU_RECIPE["int8"], "fp32_layers": ["output_Gemm"]}},
                        target="BM1684", eval={"data": "data/eval.npz", "max_drop": 100.0})
    code, out, err = tws.build(recipe)
    assert code == 0, out + err
    assert set(tws.outcomes().values()) == {"executed"}
    assert bmodel_chip(tws, "compile_fp32", "combined") == "BM1684" == bmodel_chip(tws, "compile_int8", "2b")
    quantize = stage_metrics(tws, "quantize")
    assert quantize["fp32_layers"] == ["output_Gemm"] and quantize["float_nodes"] >= 1
    assert "output_Gemm F32" in (tws.stage_dir("quantize") / "tiny8_qtable").read_text()
    lowered = (tws.stage_dir("quantize") / "tiny8_bm1684_int8_tpu.mlir").read_text()
    assert "tpu.Conv2D" in lowered and "quant.uniform<i8" in lowered
    int8_cmp = stage_metrics(tws, "compile_int8")["cmp"]
    assert all(0.9 < v["cos"] < 1.0 for v in int8_cmp.values())
    # eval: int8.cmodel_samples samples through the int8 bmodel of the largest batch size, on the cmodel
    evaluation = stage_metrics(tws, "compile_int8")["eval"]
    assert evaluation["samples"] == 3 and 0 <= evaluation["int8"] <= 1 and 0 <= evaluation["fp32"] <= 1
    commands = (tws.root / "build" / "tiny8" / "logs" / "compile_int8.cmd").read_text()
    # the command lines; the in-process steps that start them are `#` comments there
    commands = "\n".join(line for line in commands.splitlines() if not line.startswith("#"))
    # cmp b1 (3 runs) + b2 (2), per layer (top and final MLIR), eval at batch 2 (2)
    assert commands.count("model_runner") == 3 + 2 + 2 + 2 and commands.count("--dump_all_tensors") == 2
    layers = {layer["name"]: layer for layer in stage_metrics(tws, "compile_int8")["layers"]}
    assert layers and "local_sqnr" in layers["/relu/Relu_output_0_Relu"]
    assert "local_sqnr" not in layers.get("output_Gemm", {})    # kept in float: no int8 grid


@needs_python310
def test_unknown_fp32_layer_names_the_layers(tws: Int8Workspace) -> None:
    recipe = tws.recipe(**{**TPU_RECIPE, "int8": {"fp32_layers": ["gemm"]}, "batch_sizes": [1]}, target="BM1684X")
    code, out, err = tws.build(recipe, "--stage", "quantize")
    assert code == 1
    assert "no layer named 'gemm'" in out + err and "output_Gemm" in out + err


def test_int8_grids_are_read_from_the_lowered_mlir(tmp_path: Path) -> None:
    """Each int8 tensor's scale, zero point and range, by its location name (aliased or inline);
    float results have none. Lines as tpu-mlir 1.30.2 writes them for bm1684x."""
    from bmbuild.toolchains.tpu_mlir_run import quant_grids

    mlir = tmp_path / "m_bm1684x_int8_sym_tpu.mlir"
    mlir.write_text(
        '    %2 = "tpu.Cast"(%1) {with_scale = true} : (tensor<1x3x16x16x!quant.calibrated<f32<-3.9:3.9>>>) '
        '-> tensor<1x3x16x16x!quant.uniform<i8:f32, 0.030704107874015747>> loc(#loc2)\n'
        '    %5 = "tpu.Conv2D"(%2, %3, %4) {do_relu = true} : (tensor<1x3x16x16x!quant.uniform<i8:f32, 0.03>>, '
        'tensor<8x3x3x3xsi8>, tensor<1x8x1x1xi32>) -> tensor<1x8x16x16x!quant.uniform<u8:f32, 8.67E-4:3>> '
        'loc("/1/Relu_output_0_Relu")\n'
        '    %9 = "tpu.MatMul"(%8) : (tensor<1x8xf32>) -> tensor<1x10xf32> loc(#loc9)\n'
        '#loc2 = loc("input/1/Relu_output_0_Relu_si8")\n#loc9 = loc("output_Gemm")\n')
    assert quant_grids(mlir) == {"input/1/Relu_output_0_Relu_si8": (0.030704107874015747, 0, -128, 127),
                                 "/1/Relu_output_0_Relu": (8.67e-4, 3, 0, 255)}


def asymmetric_tensors_reference(int8_onnx: Path) -> set[str]:
    """The tensors the reference's int8 ONNX quantizes to int8 with a zero point."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8_onnx))
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear" and len(node.input) > 2
            and consts[node.input[2]].dtype.name == "int8" and consts[node.input[2]].any()}


def asymmetric_tensors_tpu_mlir(lowered: Path) -> set[str]:
    """The same for tpu-mlir's lowered int8 MLIR, by ONNX name (it appends `_<op>`)."""
    from bmbuild.toolchains.tpu_mlir_run import quant_grids

    return {name.rpartition("_")[0] for name, (_, zero, low, _) in quant_grids(lowered).items() if zero and low < 0}


@needs_python310
def test_bm1684x_silu_read_by_a_conv_has_a_zero_point_in_the_reference_and_the_bmodel(tws: Int8Workspace) -> None:
    """The reference models BM1684X's asymmetric SiLU/GELU outputs (tpu-mlir's --part_asymmetric,
    off by default in run_calibration): the tpu-mlir toolchain passes the flag, so the real
    compiler gives a zero point to exactly the tensors the reference does (before: none)."""
    (tws.recipes / "silu_model.py").write_text(SILU_MODEL)
    source = {"framework": "pytorch", "model": "silu_model.py:silu_net"}
    found = {}
    for toolchain in ("tpu-mlir", "reference"):
        recipe = tws.recipe(f"silu_{toolchain.replace('-', '_')}", source=source, toolchain=toolchain,
                            target="BM1684X", batch_sizes=[1], calibration={"samples": 8, "method": "minmax"})
        code, out, err = tws.build(recipe, "--stage", "quantize")
        assert code == 0, out + err
    assert "--part_asymmetric" in (tws.root / "build" / "silu_tpu_mlir" / "logs" / "calibrate.cmd").read_text()
    found["tpu-mlir"] = asymmetric_tensors_tpu_mlir(
        tws.stage_dir("quantize", "silu_tpu_mlir") / "silu_tpu_mlir_bm1684x_int8_tpu.mlir")
    found["reference"] = asymmetric_tensors_reference(tws.stage_dir("quantize", "silu_reference") /
                                                      "silu_reference.int8.onnx")
    assert found["tpu-mlir"] == found["reference"] == {"/Mul_output_0"}  # the SiLU (Sigmoid, Mul) output


@needs_python310
def test_graph_outputs_keep_their_absmax_in_tpu_mlirs_table(tws: Int8Workspace) -> None:
    """run_calibration's kl cuts a heavy-tailed output and its tuner never revisits an output (no
    layer reads it): the kept table raises it to its |x| max, as the reference's does."""
    from bmbuild.calib import read_table

    recipe = tws.recipe("cubed", source={"framework": "pytorch", "model": "int8_models.py:cubed"},
                        toolchain="tpu-mlir", target="BM1684X", batch_sizes=[1],
                        calibration={"samples": 8, "method": "kl"})
    code, out, err = tws.build(recipe, "--stage", "calibrate")
    assert code == 0, out + err
    table = read_table(tws.stage_dir("calibrate", "cubed") / "cubed_cali_table")
    for name in ("output_Flatten", "/Mul_1_output_0_Mul"):  # the output, and the cube the Flatten moves
        threshold, low, high = table[name]
        assert threshold == max(abs(low), abs(high)), name
    log = (tws.root / "build" / "cubed" / "logs" / "calibrate.log").read_text()
    assert "graph outputs kept at their |x| max (a clipped output reaches the user clipped): " in log
    assert "/Mul_1_output_0_Mul" in log


def test_output_layer_names_are_the_ops_the_main_function_returns(tmp_path: Path) -> None:
    mlir = tmp_path / "m.mlir"
    mlir.write_text('''module attributes {module.name = "m"} {
  func.func @main(%arg0: tensor<1x3xf32> loc(unknown)) -> (tensor<1x3xf32>, tensor<1x2xf32>) {
    %0 = "top.Input"(%arg0) : (tensor<1x3xf32>) -> tensor<1x3xf32> loc(#loc1)
    %1 = "top.Relu"(%0) : (tensor<1x3xf32>) -> tensor<1x3xf32> loc(#loc2)
    %2 = "top.Gemm"(%1) {do_relu = false} : (tensor<1x3xf32>) -> tensor<1x2xf32> loc("/fc/Gemm_output_0_Gemm")
    %3 = "top.Reshape"(%2) {shape = [1, 2]} : (tensor<1x2xf32>) -> tensor<1x2xf32> loc("output_Reshape")
    return %1, %3 : tensor<1x3xf32>, tensor<1x2xf32> loc(#loc)
  } loc(#loc)
} loc(#loc)
#loc = loc(unknown)
#loc1 = loc("input")
#loc2 = loc("/relu/Relu_output_0_Relu")
''')
    # the Reshape's output holds the Gemm's int8 values: both
    assert output_layer_names(mlir) == ["/relu/Relu_output_0_Relu", "output_Reshape", "/fc/Gemm_output_0_Gemm"]


def test_calibrate_is_keyed_on_the_target() -> None:
    """run_calibration's flags depend on the chip (--part_asymmetric): tpu-mlir's calibrate key holds
    the target, and so does the reference's (it gives BM1684X's asymmetric tensors tpu-mlir's range)."""
    from bmbuild.planner import keyed_params
    from bmbuild.recipe import Recipe
    from bmbuild.stages import all_stages
    from bmbuild.toolchains.reference import ReferenceToolchain
    from bmbuild.toolchains.tpu_mlir import TpuMlirToolchain

    from int8_support import BASE

    stage = next(stage for stage in all_stages() if stage.name == "calibrate")
    params = stage.params(Recipe.model_validate({"name": "tiny8", **BASE, "target": "BM1684X"}))
    assert keyed_params(stage, params, TpuMlirToolchain.consumes)["target"] == "BM1684X"
    assert keyed_params(stage, params, ReferenceToolchain.consumes)["target"] == "BM1684X"


def test_outputs_whose_first_axis_is_not_the_batch_are_compared_whole() -> None:
    """A sequence model's [time, batch, classes] output (ddddocr's [24, 1, 8210]) at batch 1: the
    bmodel's output is the reference's whole (before: cut to its first time step, and compile_fp32
    failed with `shapes differ`); a padded batch is still cut back to its real samples."""
    import numpy as np

    from bmbuild.toolchains.tpu_mlir_run import fit, unpad

    sequence = np.arange(24 * 5, dtype=np.float32).reshape(24, 1, 5)
    assert fit([sequence], [(24, 1, 5)], 1)[0].shape == (24, 1, 5)
    assert unpad([sequence], 1, 1)[0].shape == (24, 1, 5)
    padded = np.arange(6, dtype=np.float32).reshape(2, 3)          # batch 2, one real sample
    assert fit([padded], [(1, 3)], 1)[0].tolist() == [[0, 1, 2]]
    assert unpad([padded], 1, 2)[0].tolist() == [[0, 1, 2]]


# --- dry run, errors ---------------------------------------------------------------------------------
@needs_python310
def test_dry_run_prints_the_tpu_mlir_commands_and_runs_nothing(tws: Int8Workspace) -> None:
    recipe = tws.recipe(**TPU_RECIPE, target="BM1684")
    code, out, err = tws.run("run", recipe, "--dry-run")
    assert code == 0, out + err
    assert "model_transform --model_name tiny8" in out and "--input_shapes '[[2,3,16,16]]'" in out
    assert "model_deploy --mlir tiny8.mlir --quantize F32 --chip bm1684" in out
    assert "run_calibration tiny8.mlir" in out and "--cali_method max" in out
    assert "--quantize INT8 --chip bm1684 --calibration_table" in out and "--not_gen_bmodel" in out
    assert "model_tool --combine" in out
    assert "per layer: model_runner --dump_all_tensors of the top MLIR (fp32) and the int8 tpu MLIR" in out
    assert "--part_asymmetric" not in out    # BM1684 has no asymmetric int8 (its thresholds would change)
    assert not (tws.root / "build" / "tiny8" / "compile_fp32").exists()


@needs_python310
def test_a_model_tpu_mlir_rejects_fails_with_the_tools_message(tws: Int8Workspace) -> None:
    (tws.recipes / "mean_model.py").write_text(MEAN_MODEL)
    recipe = tws.recipe(source={"framework": "pytorch", "model": "mean_model.py:mean_model"}, prec="FP32",
                        toolchain="tpu-mlir", target="BM1684X", fp32={"opset": 18}, calibration=None)
    code, out, err = tws.build(recipe)
    assert code == 1
    assert "model_transform failed" in out + err
    assert "Unsupport opset for ReduceMean" in out + err      # the tool's own message, from its output
    assert "bmbuild/executor.py" not in out + err               # no bmbuild traceback


def test_missing_environment_says_how_to_fix_it(ws8: Int8Workspace, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tpu_mlir_env.DIR_VAR, str(tmp_path / "empty"))
    monkeypatch.delenv(tpu_mlir_env.ENV_VAR, raising=False)
    recipe = ws8.recipe(toolchain="tpu-mlir", target="BM1684X")
    code, out, err = ws8.build(recipe)
    assert code == 2
    assert "toolchain 'tpu-mlir' is not usable here" in err and "bmbuild toolchains install tpu-mlir" in err
    assert "Traceback" not in out + err
    code, out, _ = ws8.run("toolchains")
    line = next(line for line in out.splitlines() if line.split()[:1] == ["tpu-mlir"])
    assert "not usable" in line and "bmbuild toolchains install tpu-mlir" in out
    assert "auto picks: reference for BM1684, reference for BM1684X" in out


def test_a_pointer_to_a_missing_installation_is_an_error(ws8: Int8Workspace, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tpu_mlir_env.ENV_VAR, str(tmp_path / "nowhere"))
    code, out, _ = ws8.run("toolchains")
    assert "$BMBUILD_TPU_MLIR points at" in out and "does not exist" in out


def test_a_half_made_environment_is_never_used(ws8: Int8Workspace, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder at the managed path without the install record (a killed or foreign install)."""
    monkeypatch.setenv(tpu_mlir_env.DIR_VAR, str(tmp_path / "toolchains"))
    monkeypatch.delenv(tpu_mlir_env.ENV_VAR, raising=False)
    bin_dir = tpu_mlir_env.managed_path() / "bin"
    bin_dir.mkdir(parents=True)
    for tool in tpu_mlir_env.TOOLS:
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    from bmbuild.toolchains.base import load_toolchain

    status = load_toolchain("tpu-mlir").availability()
    assert not status.usable and "is not installed" in status.reason


# --- found environments: managed, configured, pointed at ---------------------------------------------
@needs_python310
def test_toolchains_shows_the_version_and_auto_picks_tpu_mlir(tws: Int8Workspace) -> None:
    code, out, _ = tws.run("toolchains")
    assert code == 0
    line = next(line for line in out.splitlines() if line.split()[:1] == ["tpu-mlir"])
    assert "usable" in line and "not usable" not in line and "tpu-mlir 1.30.2 (v1.30.2-" in line
    assert "tpu-mlir for BM1684X" in out
    from bmbuild.toolchains.base import load_toolchain

    assert load_toolchain("auto", "BM1684X").name == "tpu-mlir"
    versions = load_toolchain("tpu-mlir").versions()
    assert versions["tpu_mlir"] == "1.30.2" and versions["build"].startswith("v1.30.2")


@needs_python310
def test_an_installation_named_in_bmbuild_yaml_or_the_environment(tws: Int8Workspace, tpu_env: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tpu_mlir_env.DIR_VAR, str(tmp_path / "empty"))    # no managed environment
    (tws.root / "bmbuild.yaml").write_text(json.dumps({"toolchains": {"tpu-mlir": {"path": str(tpu_env)}}}))
    code, out, _ = tws.run("toolchains")
    line = next(line for line in out.splitlines() if line.split()[:1] == ["tpu-mlir"])
    assert "not usable" not in line and "bmbuild.yaml" in line and str(tpu_env) in line
    (tws.root / "bmbuild.yaml").unlink()
    monkeypatch.setenv(tpu_mlir_env.ENV_VAR, str(tpu_env / "python"))   # its python
    code, out, _ = tws.run("toolchains")
    line = next(line for line in out.splitlines() if line.split()[:1] == ["tpu-mlir"])
    assert "not usable" not in line and "$BMBUILD_TPU_MLIR" in line


@needs_python310
def test_install_again_is_a_no_op(tws: Int8Workspace, tpu_env: Path) -> None:
    code, _, err = tws.run("toolchains", "install", "tpu-mlir")
    assert code == 0 and "already installed" in err
    assert (tpu_env.parent / tpu_mlir_env.INFO_FILE).is_file()
    assert tpu_mlir_env.managed_path().is_symlink()            # published by an atomic symlink swap


# --- the demo recipe -----------------------------------------------------------------------------------
def test_the_tpu_mlir_demo_builds_resnet_yaml_for_both_chips() -> None:
    """`make demo TOOLCHAIN=tpu-mlir` builds recipes/resnet_chips.yaml: resnet.yaml's model and settings
    once per chip; only the numbers of samples run on the cmodel differ."""
    from bmbuild.recipe import load_recipe, load_recipes

    root = Path(__file__).resolve().parents[1]
    single = load_recipe(root / "recipes" / "resnet.yaml").recipe
    chips = [loaded.recipe for loaded in load_recipes([root / "recipes" / "resnet_chips.yaml"])]
    assert {(r.name, r.target) for r in chips} == {("resnet18_bm1684x", "BM1684X"), ("resnet18_bm1684", "BM1684")}
    cmodel = {"fp32": {"cmp_samples"}, "int8": {"cmodel_samples"}}

    def settings(recipe: Any) -> dict[str, Any]:
        data = recipe.model_dump(mode="json", exclude={"name", "target", "variants", "description"})
        for section, keys in cmodel.items():
            data[section] = {k: v for k, v in data[section].items() if k not in keys}
        data["source"]["model"] = Path(data["source"]["model"]).name
        return data

    assert all(settings(recipe) == settings(single) for recipe in chips)
    assert all(r.int8.cmodel_samples <= r.int8.cmp_samples for r in chips)
    makefile = (root / "Makefile").read_text()
    assert "recipes/resnet_chips.yaml" in makefile and "$(filter tpu-mlir,$(TOOLCHAIN))" in makefile


@needs_python310
def test_a_scalar_input_a_state_batched_on_axis_1_and_no_weights_build_on_the_cmodel(tws: Int8Workspace) -> None:
    """Silero VAD's input kinds on the real compiler: an int64 sample rate given as a constant
    scalar (model_transform wants [1] for it), a state [2, batch, 128], and a graph without
    weights (no weight file: copying one failed)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0), helper.make_node("Cast", ["sr"], ["srf"], to=1),
         helper.make_node("Mul", ["m", "srf"], ["y"]), helper.make_node("Relu", ["state"], ["state_out"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 16]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 16])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tws.recipes / "vad.onnx")
    recipe = tws.recipe("vad", source={"framework": "onnx", "model": "vad.onnx"}, prec="FP32", toolchain="tpu-mlir",
                        target="BM1684X", shapes=[[1, 64], [2, 1, 16], []], batch_sizes=[1],
                        inputs=[{"name": "x"}, {"name": "state", "batch_axis": 1},
                                {"name": "sr", "dtype": "int64", "value": 16000}])
    code, out, err = tws.build(recipe)
    assert code == 0, out + err
    assert "--input_shapes '[[1,64],[2,1,16],[1]]'" in (tws.root / "build" / "vad" / "logs" / "compile_fp32.cmd").read_text()
    cmp = tws.metrics("compile_fp32", "vad")["cmp"]
    assert set(cmp) == {"b1/y", "b1/state_out"} and all(v["cos"] > 0.99999 for v in cmp.values()), cmp


def test_a_scalar_input_is_given_to_model_transform_as_one_element() -> None:
    """tpu-mlir gives a shapeless ONNX input the shape [1] and checks the count: `[]` failed with
    'input shapes error: ... 1 vs 0'."""
    from bmbuild.toolchains.tpu_mlir import shapes_arg

    assert shapes_arg([[1, 512], [], [2, 1, 128]]) == "[[1,512],[1],[2,1,128]]"
