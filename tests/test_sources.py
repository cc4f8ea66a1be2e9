"""Model sources: weights (state_dict, checkpoint with key and prefix), TorchScript and ONNX files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def tiny_module(workspace: Path, seed: int = 3) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("tiny_models_copy", workspace / "recipes" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_cnn(seed=seed)


def traced_output(path: Path, x: torch.Tensor) -> torch.Tensor:
    return torch.jit.load(str(path))(x)


def test_plain_state_dict_is_loaded_strictly(workspace, write_recipe, run_bmbuild):
    model = tiny_module(workspace, seed=3)
    torch.save(model.state_dict(), workspace / "recipes" / "w.pt")
    recipe = write_recipe("w", source={"weights": "w.pt"})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    x = torch.randn(1, 3, 8, 8)
    # the traced model carries the saved weights, not the factory's seed-0 initialisation
    assert torch.allclose(traced_output(workspace / "build" / "w" / "trace" / "w.pt", x), model(x), atol=1e-6)


def test_checkpoint_key_and_prefix(workspace, write_recipe, run_bmbuild):
    model = tiny_module(workspace, seed=4)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "model_state_dict": state}, workspace / "recipes" / "ck.pth.tar")
    recipe = write_recipe("ck", source={"weights": {"path": "ck.pth.tar", "key": "model_state_dict",
                                                    "strip_prefix": "module."}})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(traced_output(workspace / "build" / "ck" / "trace" / "ck.pt", x), model(x), atol=1e-6)


def test_weights_that_do_not_match_fail_with_the_keys(workspace, write_recipe, run_bmbuild):
    model = tiny_module(workspace)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, workspace / "recipes" / "ck.pt")
    recipe = write_recipe("bad", source={"weights": {"path": "ck.pt", "key": "state_dict"}})  # no strip_prefix
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    assert "do not match the model" in out and "module.conv1.weight" in out and "strip_prefix" in out
    recipe = write_recipe("nokey", source={"weights": {"path": "ck.pt", "key": "model"}})
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 1 and "have no key 'model' (found: state_dict)" in out


def test_torchscript_source_skips_trace(workspace, write_recipe, run_bmbuild, outcomes):
    model = tiny_module(workspace)
    torch.jit.trace(model, torch.randn(1, 3, 8, 8)).save(str(workspace / "recipes" / "ts.pt"))
    recipe = write_recipe("ts", source={"framework": "torchscript", "model": "ts.pt", "kwargs": None})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("ts") == {"compile_fp32": "executed"}
    assert (workspace / "build" / "ts" / "compile_fp32" / "ts.onnx").is_file()


def test_onnx_source_starts_at_compile(workspace, write_recipe, run_bmbuild, outcomes):
    model = tiny_module(workspace)
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(workspace / "recipes" / "m.onnx"),
                      dynamo=False, opset_version=13, input_names=["input"])
    recipe = write_recipe("ox", source={"framework": "onnx", "model": "m.onnx", "kwargs": None})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("ox") == {"compile_fp32": "executed"}
    # editing the ONNX file (an external input) re-runs the stage
    with open(workspace / "recipes" / "m.onnx", "ab") as handle:
        handle.write(b"")
    torch.onnx.export(tiny_module(workspace, seed=9), (torch.randn(1, 3, 8, 8),),
                      str(workspace / "recipes" / "m.onnx"), dynamo=False, opset_version=13, input_names=["input"])
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and outcomes("ox") == {"compile_fp32": "executed"}


def test_an_onnx_model_of_ir_version_3_builds(workspace, write_recipe, run_bmbuild, outcomes):
    """ONNX 1.0-1.2 models (the ONNX zoo's Caffe2 exports) list every initializer as a graph input
    too. onnxruntime saved such a model, optimised, with the inputs of the initializers it had
    folded away still declared and now required: compile_fp32 failed with 'Required inputs
    (['conv4_b_0__SHAPE', ...]) are missing from input feed'."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # two equal initializers: onnxruntime keeps one (ConstantSharing) and left the other an input
    shapes = [numpy_helper.from_array(np.array([3], dtype=np.int64), f"{b}__SHAPE") for b in "bc"]
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["b__SHAPE"], ["b"], value=fill),
         helper.make_node("ConstantOfShape", ["c__SHAPE"], ["c"], value=fill),
         helper.make_node("Add", ["x", "b"], ["xb"]), helper.make_node("Mul", ["xb", "c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
         *[helper.make_tensor_value_info(f"{b}__SHAPE", TensorProto.INT64, [1]) for b in "bc"]],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], shapes)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.save(model, str(workspace / "recipes" / "old.onnx"))
    recipe = write_recipe("old", source={"framework": "onnx", "model": "old.onnx", "kwargs": None},
                          shapes=[[1, 3]], inputs=[{"name": "x"}])
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("old") == {"compile_fp32": "executed"}
