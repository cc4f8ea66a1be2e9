"""Models with several inputs, inputs whose batch is not axis 0, scalars and constant inputs
(issue 11 items 3 and 4): recipes say which axis of each input is the batch (or none), give
constants, and calibrate each input from its own data with its own preprocessing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import read_report

TWO_INPUTS: dict[str, Any] = {
    "source": {"model": "tiny_models.py:two_inputs"},
    "shapes": [[1, 3, 8, 8], [1, 2]],
    "inputs": [{"name": "image"}, {"name": "info"}],
}
INT8: dict[str, Any] = {
    "prec": "INT8",
    "int8": {"cmp_samples": 4, "tolerance": {"cos": 0.9, "euclid": 0.3}},
}
SAMPLES = 16


def _calibration_data(folder: Path, layout: str) -> dict[str, Any]:
    """SAMPLES samples of the two-input model written in `layout`; the recipe's calibration section."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((SAMPLES, 3, 8, 8)).astype(np.float32)
    infos = rng.standard_normal((SAMPLES, 2)).astype(np.float32)
    section: dict[str, Any] = {"samples": 8, "method": "minmax"}
    if layout == "stacked":  # one .npz, one array per input stacked on axis 0
        np.savez(folder / "calib.npz", image=images, info=infos)
        return {**section, "data": "calib.npz"}
    if layout == "per-sample":  # one .npz per sample keyed by input name (tpu-mlir's dataset layout)
        (folder / "calib").mkdir()
        for i in range(SAMPLES):
            np.savez(folder / "calib" / f"{i:03d}.npz", image=images[i], info=infos[i:i + 1])
        return {**section, "data": "calib"}
    from PIL import Image  # images for the image input, arrays for the other, paired by file name

    (folder / "photos").mkdir()
    (folder / "infos").mkdir()
    for i in range(SAMPLES):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "photos" / f"{i:03d}.png")
        np.save(folder / "infos" / f"{i:03d}.npy", infos[i])
    return {**section, "inputs": {"image": {"data": "photos", "preprocess": {"mean": [128.0], "scale": 1 / 64}},
                                  "info": {"data": "infos"}}}


@pytest.mark.parametrize("layout", ["stacked", "per-sample", "images+arrays"])
def test_two_input_model_builds_int8_from_each_data_layout(workspace, write_recipe, run_bmbuild, outcomes, layout):
    calibration = _calibration_data(workspace / "recipes", layout)
    recipe = write_recipe("two", **TWO_INPUTS, **INT8, calibration=calibration)

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert set(outcomes("two").values()) == {"executed"}
    table = (workspace / "build" / "two" / "calibrate" / "two_cali_table").read_text()
    rows = {line.split()[0]: float(line.split()[1]) for line in table.splitlines() if not line.startswith("#")}
    assert rows["image"] > 0 and rows["info"] > 0  # both inputs were fed and measured
    if layout == "images+arrays":  # (pixel - 128) / 64: at most 127/64 in magnitude
        assert rows["image"] <= 2.0
    cmp = read_report("two")["stages"]["compile_int8"]["metrics"]["cmp"]
    assert cmp["b1/output"]["cos"] > 0.9, cmp


def test_state_input_keeps_its_batch_axis_and_is_batched_there(workspace, write_recipe, run_bmbuild, outcomes):
    import onnx

    recipe = write_recipe("rnn", source={"model": "tiny_models.py:recurrent_state"},
                          shapes=[[1, 3, 4], [2, 1, 6]], batch_sizes=[1, 3],
                          inputs=[{"name": "x"}, {"name": "state", "batch_axis": 1}])

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("rnn") == {"trace": "executed", "compile_fp32": "executed"}
    model = onnx.load(str(workspace / "build" / "rnn" / "compile_fp32" / "rnn.onnx"))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["state"] == [2, "batch", 6]  # the batch is axis 1; the 2 layers stay 2
    assert dims["output1"] == [2, "batch", 6]  # the new state: its batch axis found by running the model
    cmp = read_report("rnn")["stages"]["compile_fp32"]["metrics"]["cmp"]
    assert {"b1/output1", "b3/output1"} <= set(cmp) and min(v["cos"] for v in cmp.values()) > 0.9999


def test_scalar_constant_input_is_fed_its_value(workspace, write_recipe, run_bmbuild, outcomes):
    import onnx
    import onnxruntime as ort

    recipe = write_recipe("vad", source={"model": "tiny_models.py:scaled_by_sample_rate"},
                          shapes=[[1, 16], []], batch_sizes=[1, 2],
                          inputs=[{"name": "x"}, {"name": "sr", "dtype": "int64", "value": 8000}])

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    path = workspace / "build" / "vad" / "compile_fp32" / "vad.onnx"
    sr = next(v for v in onnx.load(str(path)).graph.input if v.name == "sr")
    assert sr.type.tensor_type.elem_type == onnx.TensorProto.INT64 and not sr.type.tensor_type.shape.dim
    # the exported model takes the rate as an input: 8000 halves what 16000 gives
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ones((2, 16), np.float32)
    half = session.run(None, {"x": x, "sr": np.array(8000, np.int64)})[0]
    full = session.run(None, {"x": x, "sr": np.array(16000, np.int64)})[0]
    np.testing.assert_allclose(2 * half, full, rtol=1e-5)
    assert read_report("vad")["stages"]["compile_fp32"]["metrics"]["cmp"]["b2/output"]["cos"] > 0.9999


def test_int8_with_a_constant_state_calibrates_the_data_input_only(workspace, write_recipe, run_bmbuild, outcomes):
    np.savez(workspace / "recipes" / "frames.npz",
             x=np.random.default_rng(1).standard_normal((12, 3, 4)).astype(np.float32))
    recipe = write_recipe("rnn8", source={"model": "tiny_models.py:recurrent_state"},
                          shapes=[[1, 3, 4], [2, 1, 6]], batch_sizes=[1, 2],
                          inputs=[{"name": "x"}, {"name": "state", "batch_axis": 1, "value": 0.0}],
                          prec="INT8", calibration={"data": "frames.npz", "samples": 8, "method": "minmax"},
                          int8={"cmp_samples": 4, "tolerance": {"cos": 0.8, "euclid": 0.2}})

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert set(outcomes("rnn8").values()) == {"executed"}
    cmp = read_report("rnn8")["stages"]["compile_int8"]["metrics"]["cmp"]
    assert {"b1/output0", "b2/output0", "b2/output1"} <= set(cmp)


BAD_INPUTS = [
    ({"shapes": [[1, 3], [2, 1, 6]], "inputs": [{"name": "x"}, {"name": "h", "batch_axis": 3}]},
     "inputs[1].batch_axis", "out of range"),
    ({"shapes": [[1, 3], []], "inputs": [{"name": "x"}, {"name": "sr", "batch_axis": 0}]},
     "inputs[1].batch_axis", "scalar"),
    ({"shapes": [[1, 3], [2, 1, 6]], "inputs": [{"name": "x"}, {"name": "h", "value": [1.0, 2.0]}]},
     "inputs[1].value", "does not broadcast"),
    ({"shapes": [[1, 3], []], "inputs": [{"name": "x"}, {"name": "sr", "dtype": "int64", "value": 0.5}]},
     "inputs[1].value", "integers"),
    ({"shapes": [[1, 3], [2, 6]], "inputs": [{"name": "x"}, {"name": "h"}]}, "shapes", "disagree on the batch"),
    ({"shapes": [[3], []], "inputs": [{"name": "x", "batch_axis": None}, {"name": "s"}], "batch_sizes": [1, 2]},
     "batch_sizes", "no input has a batch axis"),
    ({"shapes": [[1, 3], [1, 3]], "inputs": [{"name": "x"}, {"name": "x"}]}, "inputs[1].name", "used twice"),
]


@pytest.mark.parametrize("overrides, key, message", BAD_INPUTS)
def test_input_mistakes_name_file_line_and_key(workspace, write_recipe, run_bmbuild, overrides, key, message):
    recipe = write_recipe("bad", **overrides)
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 2, out + err
    found = re.search(rf"{re.escape(str(recipe))}:(\d+): {re.escape(key)}: (.*)", err)
    assert found and message in found.group(2), err
    written = recipe.read_text().splitlines()[int(found.group(1)) - 1]  # the line the key is written on
    assert key.split(".")[-1].split("[")[0] in written or key.startswith("inputs"), (written, err)
    assert "Traceback" not in err


def test_several_inputs_need_data_for_each(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("two", **TWO_INPUTS, **INT8,
                          calibration={"samples": 4, "inputs": {"image": {"data": "."}}})
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 2 and "calibration.data: no calibration data for input 'info'" in err, err


def test_tpu_mlir_dataset_holds_every_input_by_name(workspace, write_recipe):
    """run_calibration's --dataset: one .npz per sample keyed by each input's name (constants too)."""
    from bmbuild.recipe import load_recipe
    from bmbuild.stagelog import StageLog
    from bmbuild.stagecontext import StageContext
    from bmbuild.toolchains import tpu_mlir_run
    from bmbuild.toolchains.tpu_mlir import TpuMlirToolchain

    calibration = _calibration_data(workspace / "recipes", "stacked")
    recipe = write_recipe("two", **{**TWO_INPUTS, "shapes": [[1, 3, 8, 8], [1, 2], []],
                                    "inputs": [{"name": "image"}, {"name": "info"}, {"name": "scale", "value": 0.5}]},
                          **INT8, toolchain="tpu-mlir", calibration=calibration)
    loaded = load_recipe(recipe)
    TpuMlirToolchain().calibrate_commands(StageContext(loaded, {"samples": 8, "method": "minmax", "bins": 2048,
                                                                "percentile": 99.99}, {"compile_fp32": workspace},
                                                       workspace, workspace, None, None))  # no refusal
    log = StageLog(workspace / "calibrate.log")
    ctx = StageContext(loaded, {}, {}, workspace / "out", workspace / "work", log, None)
    count = tpu_mlir_run.write_dataset(ctx, workspace / "dataset")
    log.close()
    files = sorted((workspace / "dataset").glob("*.npz"))
    assert count == 8 and len(files) == 8
    with np.load(files[0]) as sample:
        assert sorted(sample.files) == ["image", "info", "scale"]
        assert sample["image"].shape == (1, 3, 8, 8) and sample["info"].shape == (1, 2)
        assert sample["scale"].shape == () and float(sample["scale"]) == 0.5
    with np.load(workspace / "recipes" / "calib.npz") as stacked:  # the samples are the recipe's own
        assert any(np.array_equal(np.load(files[0])["info"][0], row) for row in stacked["info"])


def test_tpu_mlir_builds_a_two_input_model_to_int8_on_the_cmodel(workspace, write_recipe, run_bmbuild, outcomes,
                                                                  monkeypatch):
    """The real compiler: run_calibration on the dataset above, an int8 bmodel fed both inputs."""
    from test_tpu_mlir import PYTHON310, SHARED_DIR

    from bmbuild.toolchains import tpu_mlir_env

    if PYTHON310 is None:
        pytest.skip("CPython 3.10 is not installed here: tpu-mlir 1.30.2 runs only on 3.10")
    monkeypatch.setenv(tpu_mlir_env.DIR_VAR, str(SHARED_DIR))
    tpu_mlir_env.install(PYTHON310, say=lambda text: None)  # a no-op once installed
    calibration = _calibration_data(workspace / "recipes", "per-sample")
    recipe = write_recipe("two", **TWO_INPUTS, **{**INT8, "int8": {**INT8["int8"], "cmodel_samples": 2}},
                          toolchain="tpu-mlir", target="BM1684X", calibration=calibration)

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert set(outcomes("two").values()) == {"executed"}
    report = read_report("two")
    inputs = report["stages"]["compile_int8"]["metrics"]["bmodels"]["1b"]["nets"][0]["stages"][0]["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [("image", [1, 3, 8, 8]), ("info", [1, 2])]
    assert report["stages"]["compile_int8"]["metrics"]["cmp"]["b1/output"]["cos"] > 0.9


def test_which_input_reads_which_folder_is_part_of_the_key(tmp_path):
    """Swapping two inputs' folders changes the calibration key; moving the workspace does not."""
    from bmbuild.recipe import Recipe
    from bmbuild.stages.int8_common import dataset_params

    def params(root: Path, image: str, info: str) -> dict[str, Any]:
        recipe = Recipe.model_validate({
            "name": "two", **TWO_INPUTS, "source": {"framework": "onnx", "model": "m.onnx"}, **INT8,
            "calibration": {"inputs": {"image": {"data": str(root / image)}, "info": {"data": str(root / info)}}}})
        return dataset_params(recipe)

    first = params(tmp_path / "a" / "data", "left", "right")
    assert first == params(tmp_path / "elsewhere" / "clone" / "data", "left", "right")
    assert first != params(tmp_path / "a" / "data", "right", "left")
    assert first["input_data"]["image"]["data"] == "left"


def test_nntc_refuses_a_two_input_int8_recipe_before_any_stage(workspace, write_recipe, run_bmbuild):
    calibration = _calibration_data(workspace / "recipes", "stacked")
    recipe = write_recipe("two", **TWO_INPUTS, **INT8, toolchain="nntc", calibration=calibration)
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 2 and re.search(rf"{re.escape(str(recipe))}:\d+: shapes: NNTC calibration feeds one input", err), err
