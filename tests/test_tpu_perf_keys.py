"""The recipe keys tpu-perf's flags needed (issue 16): letterbox preprocessing
(`calibration.preprocess.keep_aspect_ratio`, tpu-mlir --keep_aspect_ratio), `output_names` (the
graph cut at named tensors, tpu-mlir --output_names) and `int8.asymmetric` (model_deploy
--asymmetric): what each does, which stages each re-runs, where each is refused."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import deep_merge

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import BASE, Int8Workspace, ws8  # noqa: E402,F401

RELU = "/Relu_output_0"  # tiny_cnn's ReLU as the ONNX export names it
LETTERBOX = {"resize": [16, 16], "keep_aspect_ratio": True, "pad_value": 114, "pad_type": "normal"}


def write_wide_pngs(folder: Path, n: int) -> None:
    """`n` random 8x16 RGB PNGs: a letterbox into 16x16 pads half of each sample."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)).save(folder / f"img_{i:03d}.png")


def image_calibration(**preprocess: Any) -> dict[str, Any]:
    return {"data": "data/images", "key": None, "samples": 16,
            "preprocess": {"resize": [16, 16], "mean": [127.5], "scale": 0.0078125, **preprocess}}


# --- which stages each key re-runs ------------------------------------------------------------------
def stage_params(overrides: dict[str, Any]) -> dict[str, Any]:
    from bmbuild.recipe import Recipe
    from bmbuild.stages import all_stages

    recipe = Recipe.model_validate(deep_merge({"name": "tiny8", **BASE, "calibration": image_calibration()},
                                              overrides))
    return {stage.name: stage.params(recipe) for stage in all_stages() if stage.applies(recipe)}


@pytest.mark.parametrize("overrides, stages", [
    ({"output_names": [RELU]}, {"compile_fp32"}),                 # the rest follow its new output files
    ({"int8": {"asymmetric": True}}, {"quantize", "compile_int8"}),
    ({"calibration": {"preprocess": {"keep_aspect_ratio": True}}}, {"calibrate", "compile_int8"}),
    ({"calibration": {"preprocess": LETTERBOX}}, {"calibrate", "compile_int8"}),
])
def test_each_key_is_in_the_keys_of_exactly_its_stages(overrides, stages):
    before, after = stage_params({}), stage_params(overrides)
    assert {name for name in before if before[name] != after[name]} == stages
    assert "output_names" not in before["compile_fp32"] and "asymmetric" not in before["quantize"]
    assert "keep_aspect_ratio" not in before["calibrate"]["preprocess"]  # unset: keys as before these keys


# --- output_names: the reference toolchain cuts the graph -------------------------------------------
def test_output_names_cut_the_model_and_its_comparison(workspace, write_recipe, run_bmbuild, outcomes):
    import onnx

    recipe = write_recipe("cut", output_names=[RELU])
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    model = onnx.load(str(workspace / "build" / "cut" / "compile_fp32" / "cut.onnx"))
    assert [o.name for o in model.graph.output] == [RELU]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]  # conv2 is gone
    from conftest import read_report

    cmp = read_report("cut")["stages"]["compile_fp32"]["metrics"]["cmp"]
    assert list(cmp) == [f"b1/{RELU}"] and cmp[f"b1/{RELU}"]["cos"] > 0.9999

    write_recipe("cut", output_names=[RELU, "output"])  # both, in this order
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("cut")["trace"] == "up-to-date" and outcomes("cut")["compile_fp32"] == "executed"
    model = onnx.load(str(workspace / "build" / "cut" / "compile_fp32" / "cut.onnx"))
    assert [o.name for o in model.graph.output] == [RELU, "output"]


def test_an_output_name_the_graph_lacks_fails_naming_the_closest(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("cut", output_names=["/Relu_output"])
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code != 0 and "Traceback" not in out + err
    assert "output_names: the ONNX model has no tensor '/Relu_output' (did you mean /Relu_output_0" in out + err


# --- refused where a toolchain does not implement a key ---------------------------------------------
@pytest.mark.parametrize("toolchain, overrides, key, implementers", [
    ("nntc", {"output_names": [RELU]}, "output_names", "reference, tpu-mlir, tvm"),   # in registry order
    ("nntc", {"int8": {"asymmetric": True}}, "int8.asymmetric", "reference, tpu-mlir"),
])
def test_a_key_a_toolchain_lacks_is_refused_by_validate(ws8: Int8Workspace, toolchain, overrides, key,
                                                        implementers):
    recipe = ws8.recipe(toolchain=toolchain, **overrides)
    code, out, err = ws8.run("validate", recipe)
    text = out + err
    assert code != 0 and "Traceback" not in text
    assert f"toolchain '{toolchain}' does not implement {key} (implemented by {implementers})" in text
    line = next(i for i, text_line in enumerate(recipe.read_text().splitlines(), 1)
                if text_line.strip().startswith(key.split(".")[-1] + ":"))
    assert f"{recipe.name}:{line}: {key}: toolchain" in text


# --- keep_aspect_ratio: bmbuild's own preprocessing, so every toolchain calibrates on it ------------
def test_keep_aspect_ratio_recalibrates_on_letterboxed_samples(ws8: Int8Workspace) -> None:
    write_wide_pngs(ws8.recipes / "data" / "images", 40)
    recipe = ws8.recipe(calibration=image_calibration())
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    table = ws8.stage_dir("calibrate") / "tiny8_cali_table"
    stretched = table.read_text()

    ws8.recipe(calibration=image_calibration(keep_aspect_ratio=True, pad_value=255))
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert got["trace"] == got["compile_fp32"] == "up-to-date" and got["calibrate"] == "executed"
    assert table.read_text() != stretched


# --- tpu-mlir: the flags on its command lines (dry run: no environment needed) ----------------------
def dry_run_tools(text: str, tool: str) -> list[list[str]]:
    commands = [[word for word in shlex.split(line, comments=True) if "=" not in word] for line in text.splitlines()
                if line.startswith("  ") and not line.strip().startswith("#")]
    return [words[1:] for words in commands if words and Path(words[0]).name == tool]


def test_tpu_mlir_dry_run_passes_the_three_keys(ws8: Int8Workspace) -> None:
    write_wide_pngs(ws8.recipes / "data" / "images", 40)
    recipe = ws8.recipe(toolchain="tpu-mlir", target="BM1684X", output_names=["/Relu_output_0"],
                        calibration=image_calibration(**LETTERBOX), int8={"asymmetric": True})
    code, out, err = ws8.run("run", recipe, "--dry-run")
    assert code == 0, out + err
    transforms = dry_run_tools(out, "model_transform")
    assert len(transforms) == 2  # compile_fp32's and calibrate's
    assert all(words[words.index("--output_names") + 1] == "/Relu_output_0" for words in transforms)
    fp32, calibrate = transforms
    assert "--keep_aspect_ratio" not in fp32  # preprocessing is not in compile_fp32's key
    at = calibrate.index("--keep_aspect_ratio")
    assert calibrate[at:at + 7] == ["--keep_aspect_ratio", "--resize_dims", "16,16", "--pad_value", "114",
                                    "--pad_type", "normal"]
    deploys = dry_run_tools(out, "model_deploy")
    int8 = [words for words in deploys if words[words.index("--quantize") + 1] == "INT8"]
    assert len(int8) == 2 and all("--asymmetric" in words for words in int8)  # quantize and compile_int8
    assert not [words for words in deploys if "--asymmetric" in words and words not in int8]


# --- the real compiler: one build with a cut graph and asymmetric int8 -----------------------------
@pytest.fixture
def real_tpu(ws8: Int8Workspace, monkeypatch: pytest.MonkeyPatch) -> Int8Workspace:
    """ws8 with the shared tpu-mlir environment (installed once per machine by test_tpu_mlir's fixture)."""
    from test_tpu_mlir import PYTHON310, SHARED_DIR
    from bmbuild.toolchains import tpu_mlir_env

    if PYTHON310 is None:
        pytest.skip("CPython 3.10 is not installed here: tpu-mlir 1.30.2 runs only on 3.10")
    monkeypatch.setenv(tpu_mlir_env.DIR_VAR, str(SHARED_DIR))
    monkeypatch.delenv(tpu_mlir_env.ENV_VAR, raising=False)
    tpu_mlir_env.install(PYTHON310, say=lambda text: None)  # a no-op when installed
    return ws8


def test_tpu_mlir_builds_a_cut_model_with_asymmetric_int8(real_tpu: Int8Workspace) -> None:
    inner = "/relu_1/Relu_output_0"  # tiny_classifier's second ReLU (self.relu called again)
    recipe = real_tpu.recipe(toolchain="tpu-mlir", target="BM1684X", output_names=[inner, "output"],
                             calibration={"samples": 8, "method": "minmax"},
                             int8={"asymmetric": True, "cmp_samples": 4, "cmodel_samples": 2})
    code, out, err = real_tpu.build(recipe)
    assert code == 0, out + err
    # both outputs, in the recipe's order, from the cmodel: fp32 against the cut ONNX (onnxruntime)
    for stage, cos in (("compile_fp32", 0.99999), ("compile_int8", 0.99)):
        cmp = real_tpu.metrics(stage)["cmp"]
        assert list(cmp) == [f"b1/{inner}", "b1/output"] and all(v["cos"] > cos for v in cmp.values()), cmp
    # asymmetric int8: activations with zero points in the int8 tpu MLIR
    (lowered,) = real_tpu.stage_dir("quantize").glob("*_tpu.mlir")
    zero_points = re.findall(r"quant\.uniform<[iu]8:f32, [-+.\dE]+:(-?\d+)>", lowered.read_text())
    assert any(int(zero) != 0 for zero in zero_points), zero_points  # symmetric int8 has none
    logs = real_tpu.root / "build" / "tiny8" / "logs"
    assert "--asymmetric" in (logs / "compile_int8.cmd").read_text()
    assert "--output_names /relu_1/Relu_output_0,output" in (logs / "compile_fp32.cmd").read_text()


def test_tpu_mlir_builds_the_mode_calibrate_chose_for_asymmetric_auto(real_tpu: Int8Workspace) -> None:
    """int8.asymmetric auto (the default) on BM1684X: the tpu-mlir toolchain's calibrate chooses as
    the reference's does, and model_deploy builds that mode for real; the bmodel on the cmodel lands
    within 0.02 mean cos of the reference's simulation of the same choice."""
    import json

    from bmbuild.calib.asymmetry import choice_name

    lopsided = {"source": {"framework": "pytorch", "model": "int8_models.py:lopsided"}, "target": "BM1684X",
                "int8": {"cmp_samples": 4, "cmodel_samples": 4}}
    for name, toolchain in (("mlir", "tpu-mlir"), ("ref", "reference")):
        code, out, err = real_tpu.build(real_tpu.recipe(name, toolchain=toolchain, **lopsided))
        assert code == 0, out + err
    choice = json.loads((real_tpu.stage_dir("calibrate", "mlir") / choice_name("mlir")).read_text())
    assert choice["asymmetric"] is True, choice
    assert real_tpu.metrics("quantize", "mlir")["asymmetric"] is True  # tpu-mlir named its MLIR *_int8_asym_*
    deploys = (real_tpu.root / "build" / "mlir" / "logs" / "compile_int8.cmd").read_text()
    assert "--asymmetric" in deploys
    bmodel = real_tpu.metrics("compile_int8", "mlir")["cmp"]["b1/output"]["cos"]
    reference = real_tpu.metrics("compile_int8", "ref")["cmp"]["b1/output"]["cos"]
    assert abs(bmodel - reference) < 0.02, (bmodel, reference)


def test_reference_int8_asymmetric_reruns_quantize_with_zero_points(ws8: Int8Workspace) -> None:
    """int8.asymmetric on the reference toolchain: only quantize and compile_int8 run again, and the
    int8 model's activations now carry zero points (tpu-mlir's model_deploy --asymmetric)."""
    import onnx
    from onnx import numpy_helper

    def zero_points() -> list[int]:
        model = onnx.load(str(ws8.stage_dir("quantize") / "tiny8.int8.onnx"))
        consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return [int(consts[n.input[2]].ravel()[0]) for n in model.graph.node
                if n.op_type == "QuantizeLinear" and len(n.input) > 2 and consts[n.input[2]].size == 1]

    recipe = ws8.recipe()
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    assert not any(zero_points())
    ws8.recipe(int8={"asymmetric": True})
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    got = ws8.outcomes()
    assert got["calibrate"] == "up-to-date" and got["quantize"] == got["compile_int8"] == "executed"
    assert any(zero_points())
