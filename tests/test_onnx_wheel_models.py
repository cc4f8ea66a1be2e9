"""Models nobody here wrote, shipped inside the onnx wheel (its backend test data): ONNX 1.0-era
files that `bmbuild init` and a build must take as a user would, and clear errors where they cannot.

- `light/light_bvlc_alexnet.onnx`: IR version 3 (every initializer also a graph input), Caffe2's
  ConstantOfShape weights; onnxruntime's optimiser left shared constants as required inputs.
- `pytorch-converted/test_AvgPool2d`: opset 1-6 operators onnxruntime has no kernels for.
- `pytorch-operator/test_operator_mm`: two fixed-shape inputs whose first axes differ (no batch).
- `simple/test_expand_shape_model1`: an int64 shape input that random integers cannot feed.
- `pytorch-operator/test_operator_add_size1_broadcast`: a float64 input (bmbuild feeds no float64).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import yaml

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def init(run_bmbuild, workspace: Path, source: Path, name: str) -> tuple[int, str, str]:
    shutil.copyfile(source, workspace / f"{name}.onnx")
    return run_bmbuild("init", f"{name}.onnx")


@pytest.mark.parametrize("source, name", [
    (DATA / "light" / "light_bvlc_alexnet.onnx", "alexnet"),
    (DATA / "pytorch-converted" / "test_AvgPool2d" / "model.onnx", "avgpool"),
    (DATA / "pytorch-operator" / "test_operator_mm" / "model.onnx", "mm"),
    (DATA / "pytorch-converted" / "test_ZeroPad2d" / "model.onnx", "pad"),  # IR 3, opset 6: Pad's pads become an input
])
def test_old_onnx_models_init_and_build(workspace, run_bmbuild, source, name):
    code, out, err = init(run_bmbuild, workspace, source, name)
    assert code == 0, out + err
    code, out, err = run_bmbuild("run", f"recipes/{name}.yaml", "--plain", "--toolchain", "reference")
    assert code == 0, out + err
    assert "fp32 cmp cos=1.000000" in out
    if name == "avgpool":
        log = (workspace / "build" / name / "logs" / "compile_fp32.log").read_text()
        assert "converted the model from opset 6 to 13" in log
        assert onnx.load(str(workspace / "build" / name / "compile_fp32" / f"{name}.onnx")).opset_import[0].version == 13
    if name == "mm":
        recipe = yaml.safe_load((workspace / "recipes" / "mm.yaml").read_text())
        assert recipe["shapes"] == [[2, 3], [3, 4]]
        assert [spec.get("batch_axis", 0) for spec in recipe["inputs"]] == [None, None]


def test_an_integer_shape_input_gets_a_hint_then_builds_with_its_value(workspace, run_bmbuild):
    code, out, err = init(run_bmbuild, workspace, DATA / "simple" / "test_expand_shape_model1" / "model.onnx", "expand")
    assert code == 0, out + err
    code, out, err = run_bmbuild("run", "recipes/expand.yaml", "--plain", "--toolchain", "reference")
    assert code == 1
    assert "invalid expand shape" in out
    assert "the comparison fed inputs[1] 'shape' seeded random integers 0..9" in out and "(inputs[i].value)" in out
    path = workspace / "recipes" / "expand.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["inputs"][1]["value"] = [3, 1]
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = run_bmbuild("run", "recipes/expand.yaml", "--plain", "--toolchain", "reference")
    assert code == 0, out + err


def test_an_input_type_bmbuild_cannot_feed_is_named_without_an_impossible_hint(workspace, run_bmbuild):
    code, out, err = init(run_bmbuild, workspace,
                          DATA / "pytorch-operator" / "test_operator_add_size1_broadcast" / "model.onnx", "f64")
    assert code == 0, out + err
    code, out, err = run_bmbuild("validate", "recipes/f64.yaml")
    assert code == 2
    assert "inputs[0].dtype: the ONNX model's input '0' is float64: bmbuild feeds inputs of float32, float16, " \
           "int32, int64 only" in err
    assert "set inputs[0].dtype: float64" not in err and "Traceback" not in err
