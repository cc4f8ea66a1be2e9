"""`bmbuild init MODEL`: bmbuild.yaml, schemas/ and a recipe with the input shapes read from the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


def read_recipe(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def test_init_for_a_pytorch_callable_reads_the_shape_from_its_first_layer(workspace, run_bmbuild):
    code, out, err = run_bmbuild("init", "recipes/tiny_models.py:tiny_cnn")
    assert code == 0, err
    assert "wrote bmbuild.yaml" in out and "wrote recipes/tiny_cnn.yaml" in out
    recipe = read_recipe("recipes/tiny_cnn.yaml")
    assert recipe["source"] == {"framework": "pytorch", "model": "tiny_models.py:tiny_cnn"}
    assert recipe["shapes"] == [[1, 3, 224, 224]]  # Conv2d(3, ...): 3 channels, a guessed image side
    first = Path("recipes/tiny_cnn.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/recipe.schema.json"
    assert json.loads(Path("schemas/recipe.schema.json").read_text())["type"] == "object"
    assert yaml.safe_load(Path("bmbuild.yaml").read_text()) == {"build_dir": "build", "jobs": 1}
    code, out, _ = run_bmbuild("validate", "recipes/tiny_cnn.yaml")
    assert code == 0 and "ok" in out

    code, _, err = run_bmbuild("init", "recipes/tiny_models.py:tiny_cnn")  # exists: not overwritten
    assert code == 2 and "exists; pass --force" in err
    Path("recipes/mlp.py").write_text("import torch.nn as nn\n\n\ndef mlp():\n"
                                      "    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))\n")
    code, _, err = run_bmbuild("init", "recipes/mlp.py:mlp", "--name", "my-mlp")
    assert code == 0, err
    assert read_recipe("recipes/my-mlp.yaml")["shapes"] == [[1, 6]]  # Linear(6, ...)
    code, _, err = run_bmbuild("init", "recipes/tiny_models.py:tiny_cnn", "--force", "--shape", "1,3,8,8")
    assert code == 0, err
    assert read_recipe("recipes/tiny_cnn.yaml")["shapes"] == [[1, 3, 8, 8]]


def test_init_for_an_onnx_file_takes_its_declared_shapes_and_builds(workspace, run_bmbuild):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])])
    Path("models").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "models/relu.onnx")
    code, out, err = run_bmbuild("init", "models/relu.onnx")
    assert code == 0, err
    recipe = read_recipe("recipes/relu.yaml")
    assert recipe["source"] == {"framework": "onnx", "model": "../models/relu.onnx"}
    assert recipe["shapes"] == [[1, 3, 8, 8]] and recipe["inputs"] == [{"name": "x"}]  # the dynamic batch becomes 1
    code, out, err = run_bmbuild("run", "recipes/relu.yaml", "--plain")
    assert code == 0, out + err
    assert "executed   relu:compile_fp32" in out


def test_init_mistakes_are_one_clear_error(workspace, run_bmbuild, capsys):
    for args, message in [
        (["recipes/missing.py:net"], "recipes/missing.py: no such file"),
        (["recipes/tiny_models.py"], "expected path/model.py:callable (PyTorch) or path/model.onnx"),
        (["recipes/tiny_models.py:two_inputs"], "pass the right one with --shape"),  # 2 inputs: a guess fails
        (["recipes/tiny_models.py:tiny_attention"], "does not take an input of shape [1, 4]"),  # a sequence
        (["recipes/tiny_models.py:nothing_here"], "defines no 'nothing_here'"),
    ]:
        code, out, err = run_bmbuild("init", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert not list(Path("recipes").glob("*.yaml"))
    with pytest.raises(SystemExit) as stop:  # argparse: usage and the message, exit 2
        run_bmbuild("init", "recipes/tiny_models.py:tiny_cnn", "--shape", "1,0")
    assert stop.value.code == 2 and "dimensions must be positive integers" in capsys.readouterr().err


@pytest.mark.parametrize("named", [True, False])
def test_init_reads_each_inputs_batch_axis_and_names_what_to_check(workspace, run_bmbuild, named):
    """Silero VAD's inputs: audio [batch, sequence], a state [2, batch, 128], an int64 sample rate
    (a scalar). Every input's first axis was taken as the batch: the recipe init wrote failed its
    own validation ("the inputs disagree on the batch size"). Without dimension names (silero_vad.onnx
    itself), the first dynamic axis of each input is its batch."""
    import onnx
    from onnx import TensorProto, helper

    batch, sequence = ("batch", "sequence") if named else (None, None)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0), helper.make_node("Cast", ["sr"], ["srf"], to=1),
         helper.make_node("Mul", ["m", "srf"], ["y"]), helper.make_node("Relu", ["state"], ["state_out"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, sequence]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 128]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, batch, 128])])
    Path("models").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "models/vad.onnx")
    code, out, err = run_bmbuild("init", "models/vad.onnx")
    assert code == 0, err
    recipe = read_recipe("recipes/vad.yaml")
    assert recipe["shapes"] == [[1, 1], [2, 1, 128], []]
    assert recipe["inputs"] == [{"name": "x"}, {"name": "state", "batch_axis": 1}, {"name": "sr", "dtype": "int64"}]
    axis = "1 (sequence)" if named else "1"
    assert f"check: input 'x': dynamic axis {axis} written as 1; set its size in shapes" in out
    assert "check: input 'sr' is an integer scalar: give its value (inputs: value:), e.g. a sample rate" in out
    assert f"# check: input 'x': dynamic axis {axis} written as 1" in Path("recipes/vad.yaml").read_text()
    code, out, err = run_bmbuild("validate", "recipes/vad.yaml")
    assert code == 0, out + err


def test_init_batch_axes_from_dimensions() -> None:
    from bmbuild.init import DYNAMIC, batch_axes

    assert batch_axes([[1, 3, 8, 8]]) == [0]                                   # no dynamic axis: as before
    assert batch_axes([["N", 3], [2, "N", 4], [], [1, 128]]) == [0, 1, None, None]
    assert batch_axes([[DYNAMIC, DYNAMIC], [2, DYNAMIC, 128], []]) == [0, 1, None]
    assert batch_axes([["seq", 576], [1, 1, 128]]) == [0, None]                 # LSTM states of a fixed size
    assert batch_axes([]) == []
