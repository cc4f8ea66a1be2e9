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
