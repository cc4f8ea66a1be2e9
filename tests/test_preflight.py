"""`validate`, and `run` before any stage, check a recipe against the files it names (issue 11
item 8): calibration data, multi-input data, ONNX source inputs, the evaluation set. Each problem
is one line naming the recipe file, the line and the key; nothing is built."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import subprocess_env

INT8: dict[str, Any] = {"prec": "INT8", "calibration": {"data": "calib", "samples": 4, "method": "minmax"},
                        "int8": {"cmp_samples": 2}}
TWO_INPUTS: dict[str, Any] = {"source": {"model": "tiny_models.py:two_inputs"}, "shapes": [[1, 3, 8, 8], [1, 2]],
                              "inputs": [{"name": "image"}, {"name": "info"}]}


def _npy_folder(folder: Path, count: int, shape: tuple[int, ...] = (3, 8, 8)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(folder / f"{i:03d}.npy", np.zeros(shape, np.float32))


def _pngs(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i:03d}.png")


def _refused(run_bmbuild, recipe: Path, key: str, *needles: str) -> str:
    """`validate` and `run` both fail with exit 2 naming recipe:line: key; `run` builds nothing."""
    for command in ("validate", "run"):
        code, out, err = run_bmbuild(command, recipe, *(["--plain"] if command == "run" else []))
        assert code == 2, (command, out + err)
        found = re.search(rf"{re.escape(str(recipe))}:(\d+): {re.escape(key)}: (.*)", err)
        assert found, (command, err)
        for needle in needles:
            assert needle in found.group(2), (needle, err)
        assert "Traceback" not in out + err
    assert not (recipe.parent.parent / "build").exists(), "a stage ran"
    return err


def _line_of(recipe: Path, text: str) -> int:
    """The first line of `recipe` that starts with `text` (after its indentation)."""
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), start=1) if line.strip().startswith(text))


def test_images_without_preprocess(workspace, write_recipe, run_bmbuild):
    _pngs(workspace / "recipes" / "calib", 8)
    recipe = write_recipe("img", **INT8)
    err = _refused(run_bmbuild, recipe, "calibration.preprocess", "holds images", "needs `preprocess`")
    assert f"{recipe}:{_line_of(recipe, 'calibration:')}:" in err  # the section, where preprocess goes


def test_arrays_with_preprocess(workspace, write_recipe, run_bmbuild):
    _npy_folder(workspace / "recipes" / "calib", 8)
    recipe = write_recipe("arr", **{**INT8, "calibration": {**INT8["calibration"], "preprocess": {"mean": [1.0]}}})
    _refused(run_bmbuild, recipe, "calibration.preprocess", "preprocess applies to images only")


def test_more_samples_asked_than_the_data_holds(workspace, write_recipe, run_bmbuild):
    _npy_folder(workspace / "recipes" / "calib", 5)
    recipe = write_recipe("few", **INT8)  # 4 + 2 held out
    err = _refused(run_bmbuild, recipe, "calibration.samples", "only 5 samples", "need 6")
    assert f"{recipe}:{_line_of(recipe, 'samples:')}:" in err


def test_empty_calibration_folder(workspace, write_recipe, run_bmbuild):
    (workspace / "recipes" / "calib").mkdir()
    (workspace / "recipes" / "calib" / "notes.txt").write_text("no samples here")
    recipe = write_recipe("empty", **INT8)
    err = _refused(run_bmbuild, recipe, "calibration.data", "no .jpg/.jpeg/.png/.npy/.npz files")
    assert f"{recipe}:{_line_of(recipe, 'data: calib')}:" in err


def test_unreadable_calibration_files(workspace, write_recipe, run_bmbuild):
    (workspace / "recipes" / "calib").mkdir()
    (workspace / "recipes" / "calib" / "000.png").write_bytes(b"<html>not an image</html>")
    recipe = write_recipe("junk", **{**INT8, "calibration": {**INT8["calibration"], "preprocess": {"mean": [0.0]}}})
    _refused(run_bmbuild, recipe, "calibration.data", "000.png is not a JPEG or PNG image")
    (workspace / "recipes" / "stacked.npz").write_bytes(b"PK\x03\x04 truncated")
    stacked = write_recipe("junk2", **{**INT8, "calibration": {**INT8["calibration"], "data": "stacked.npz"}})
    _refused(run_bmbuild, stacked, "calibration.data", "cannot read as .npz")


def test_wrong_sample_shape_in_a_folder(workspace, write_recipe, run_bmbuild):
    _npy_folder(workspace / "recipes" / "calib", 8, shape=(3, 4, 4))
    recipe = write_recipe("shape", **INT8)
    _refused(run_bmbuild, recipe, "calibration.data", "000.npy holds an array of shape [3, 4, 4]", "[3, 8, 8]")


def test_multi_input_npz_without_an_inputs_array(workspace, write_recipe, run_bmbuild):
    np.savez(workspace / "recipes" / "calib.npz", image=np.zeros((8, 3, 8, 8), np.float32))
    recipe = write_recipe("two", **TWO_INPUTS, **{**INT8, "calibration": {**INT8["calibration"], "data": "calib.npz"}})
    _refused(run_bmbuild, recipe, "calibration.inputs.info.key", "no array 'info' for input 'info'",
             "['image']")


def test_multi_input_sources_of_different_sizes_or_unpaired(workspace, write_recipe, run_bmbuild):
    _pngs(workspace / "recipes" / "photos", 8)
    _npy_folder(workspace / "recipes" / "infos", 7, shape=(2,))
    calibration = {"samples": 4, "inputs": {"image": {"data": "photos", "preprocess": {"mean": [0.0]}},
                                            "info": {"data": "infos"}}}
    recipe = write_recipe("two", **TWO_INPUTS, **{**INT8, "calibration": calibration})
    _refused(run_bmbuild, recipe, "calibration.inputs.info.data", "7 calibration samples", "'image' has 8")
    np.save(workspace / "recipes" / "infos" / "x07.npy", np.zeros(2, np.float32))  # 8 now, one misnamed
    _refused(run_bmbuild, recipe, "calibration.inputs.info.data", "paired by file name")


def test_multi_input_arrays_of_the_wrong_shape(workspace, write_recipe, run_bmbuild):
    np.savez(workspace / "recipes" / "calib.npz", image=np.zeros((8, 3, 8, 8), np.float32),
             info=np.zeros((8, 3), np.float32))
    recipe = write_recipe("two", **TWO_INPUTS, **{**INT8, "calibration": {**INT8["calibration"], "data": "calib.npz"}})
    _refused(run_bmbuild, recipe, "calibration.data", "shape [8, 3]", "input 'info' needs samples of shape [2]")


def _onnx_model(path: Path, names: list[str], dtype: str = "float32", batch: int | str = "batch") -> None:
    import torch

    class Model(torch.nn.Module):
        def forward(self, image, info):
            return image.mean(dim=(1, 2, 3)) + info.sum(dim=1).to(torch.float32)

    info = torch.zeros(1, 2, dtype=getattr(torch, dtype))
    axes = {n: {0: batch} for n in names} if isinstance(batch, str) else None
    torch.onnx.export(Model(), (torch.zeros(1, 3, 8, 8), info), str(path), dynamo=False, opset_version=17,
                      input_names=names, dynamic_axes=axes)


ONNX_CASES = [
    ({"shapes": [[1, 3, 8, 8]], "inputs": [{"name": "image"}]}, "shapes", "takes 2 input(s) ['image', 'info']"),
    ({"shapes": [[1, 3, 8, 8], [1, 2]]}, "shapes", "inputs are named ['image', 'info']"),
    ({"shapes": [[1, 3, 8, 8], [1, 2]], "inputs": [{"name": "image"}, {"name": "im_info"}]}, "inputs[1].name",
     "input 1 is named 'info', not 'im_info'"),
    ({"shapes": [[1, 3, 8, 8], [1, 3]], "inputs": [{"name": "image"}, {"name": "info"}]}, "shapes[1]",
     "has shape [batch, 2], shapes[1] is [1, 3]"),
    ({"shapes": [[1, 3, 8, 8], [1, 2, 1]], "inputs": [{"name": "image"}, {"name": "info"}]}, "shapes[1]",
     "has 2 dimension(s)"),
]


@pytest.mark.parametrize("overrides, key, message", ONNX_CASES)
def test_onnx_source_inputs_differ_from_the_recipe(workspace, write_recipe, run_bmbuild,
                                                   overrides, key, message):
    _onnx_model(workspace / "recipes" / "m.onnx", ["image", "info"])
    recipe = write_recipe("ox", source={"framework": "onnx", "model": "m.onnx", "kwargs": None}, **overrides)
    _refused(run_bmbuild, recipe, key, message)


def test_onnx_source_dtype(workspace, write_recipe, run_bmbuild):
    _onnx_model(workspace / "recipes" / "m.onnx", ["image", "info"], dtype="int64", batch=1)
    base = {"source": {"framework": "onnx", "model": "m.onnx", "kwargs": None}, "shapes": [[1, 3, 8, 8], [1, 2]]}
    recipe = write_recipe("ox", **base, inputs=[{"name": "image"}, {"name": "info"}])
    _refused(run_bmbuild, recipe, "inputs[1].dtype", "'info' is int64, the recipe feeds float32")
    recipe = write_recipe("ox", **base, inputs=[{"name": "image"}, {"name": "info", "dtype": "int64"}])
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 0, err


def test_onnx_source_with_a_fixed_batch_and_other_batch_sizes(workspace, write_recipe, run_bmbuild):
    _onnx_model(workspace / "recipes" / "m.onnx", ["image", "info"], batch=1)
    base = {"source": {"framework": "onnx", "model": "m.onnx", "kwargs": None}, "shapes": [[1, 3, 8, 8], [1, 2]],
            "inputs": [{"name": "image"}, {"name": "info"}], "batch_sizes": [1, 4]}
    # onnxruntime runs the model as it is: batch 4 cannot run
    _refused(run_bmbuild, write_recipe("ox", **base), "batch_sizes", "fixed batch of 1", "batch size 4")
    # tpu-mlir's model_transform sets the shapes itself
    assert run_bmbuild("validate", write_recipe("ox", **base, toolchain="tpu-mlir"))[0] == 0


def test_evaluation_set_that_does_not_match(workspace, write_recipe, run_bmbuild):
    _npy_folder(workspace / "recipes" / "calib", 8)
    np.savez(workspace / "recipes" / "eval.npz", x=np.zeros((10, 3, 8, 8), np.float32), y=np.zeros(9, np.int64))
    recipe = write_recipe("ev", **INT8, eval={"data": "eval.npz"})
    _refused(run_bmbuild, recipe, "eval.y_key", "one label per sample of x (10)")
    recipe = write_recipe("ev", **INT8, eval={"data": "eval.npz", "x_key": "images"})
    _refused(run_bmbuild, recipe, "eval.x_key", "no array 'images'")


def test_a_good_recipe_passes_and_builds(workspace, write_recipe, run_bmbuild, outcomes):
    _npy_folder(workspace / "recipes" / "calib", 8)
    recipe = write_recipe("good", **{**INT8, "int8": {"cmp_samples": 2, "tolerance": {"cos": -1, "euclid": -1}}})
    assert run_bmbuild("validate", recipe)[0] == 0
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert set(outcomes("good").values()) == {"executed"}


PROBE = """
import json, sys
import bmbuild.cli
code = bmbuild.cli.main(sys.argv[1:])
print("PROBE " + json.dumps({"code": code, "heavy": sorted(m for m in ("numpy", "torch", "onnx", "onnxruntime")
                                                           if m in sys.modules)}))
"""


def test_the_checks_import_no_numpy_torch_or_onnx(workspace, write_recipe):
    _onnx_model(workspace / "recipes" / "m.onnx", ["image", "info"])
    np.savez(workspace / "recipes" / "calib.npz", image=np.zeros((8, 3, 8, 8), np.float32),
             info=np.zeros((8, 2), np.float32))
    recipe = write_recipe("ox", **{**TWO_INPUTS, "source": {"framework": "onnx", "model": "m.onnx", "kwargs": None}},
                          **{**INT8, "calibration": {**INT8["calibration"], "data": "calib.npz"}})
    assert _probe(workspace, "validate", recipe) == {"code": 0, "heavy": []}
    # the checks did run: a recipe asking for more samples than there are is refused, still lightly
    too_many = write_recipe("ox2", **{**TWO_INPUTS, "source": {"framework": "onnx", "model": "m.onnx", "kwargs": None}},
                            **{**INT8, "calibration": {**INT8["calibration"], "data": "calib.npz", "samples": 20}})
    assert _probe(workspace, "validate", too_many) == {"code": 2, "heavy": []}


def _probe(cwd: Path, *args: Any) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1][len("PROBE "):])


def test_keep_going_leaves_out_the_recipe_that_fails_the_checks(workspace, write_recipe, run_bmbuild, outcomes):
    (workspace / "recipes" / "calib").mkdir()  # empty: refused
    bad = write_recipe("bad", **INT8)
    write_recipe("good")
    code, out, err = run_bmbuild("run", workspace / "recipes", "--plain", "-k")
    assert code == 2, out + err  # a user error, reported; the other recipe still built
    assert outcomes("good") == {"trace": "executed", "compile_fp32": "executed"}
    assert not (workspace / "build" / "bad").exists()
    assert f"{bad}:" in out + err and "calibration.data" in out + err and "1 broken recipe(s) left out" in out + err
