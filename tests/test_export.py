"""ONNX export (issue 11 items 5, 6 and 9): from the eager module, so attention layers export; at
opset 17 by default; an exporter's failure is one line on the console with its full message in
the log; onnxruntime's optimised model is stored only when it differs from the export."""

from __future__ import annotations

from conftest import read_report

ATTENTION = {"source": {"model": "tiny_models.py:tiny_attention"}, "shapes": [[1, 5, 4]], "batch_sizes": [1, 2]}


def _onnx(workspace, name: str):
    import onnx

    return onnx.load(str(workspace / "build" / name / "compile_fp32" / f"{name}.onnx"))


def test_multihead_attention_exports_from_the_eager_module(workspace, write_recipe, run_bmbuild, outcomes):
    # opset 14: the traced module failed at any opset ("transpose for tensor of unknown rank")
    recipe = write_recipe("attn", **ATTENTION, fp32={"opset": 14, "cmp_samples": 2})

    code, out, err = run_bmbuild("run", recipe, "--plain")

    assert code == 0, out + err
    assert outcomes("attn") == {"trace": "executed", "compile_fp32": "executed"}
    model = _onnx(workspace, "attn")
    assert {n.op_type for n in model.graph.node} >= {"MatMul", "Softmax"}
    cmp = read_report("attn")["stages"]["compile_fp32"]["metrics"]["cmp"]
    assert set(cmp) == {"b1/output", "b2/output"} and min(v["cos"] for v in cmp.values()) > 0.99999


def test_default_opset_exports_scaled_dot_product_attention(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("attn", **ATTENTION)  # no opset: 13 could not export scaled_dot_product_attention
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    opsets = {o.domain: o.version for o in _onnx(workspace, "attn").opset_import}
    assert opsets[""] == 17
    assert "LayerNormalization" in {n.op_type for n in _onnx(workspace, "attn").graph.node}


def test_export_failure_is_one_line_on_the_console_and_in_full_in_the_log(workspace, write_recipe, run_bmbuild,
                                                                           outcomes):
    recipe = write_recipe("attn", **ATTENTION, fp32={"opset": 13})  # no symbolic for sdpa before 14
    code, out, err = run_bmbuild("run", recipe, "--plain")
    text = out + err
    assert code == 1 and outcomes("attn")["compile_fp32"] == "failed", text
    assert "ONNX export failed: UnsupportedOperatorError" in text and "scaled_dot_product_attention" in text
    assert "Torch IR graph" not in text and "%" not in text  # the exporter's graph dump stays out
    assert "the exporter's output is in the log" in text
    log = (workspace / "build" / "attn" / "logs" / "compile_fp32.log").read_text()
    assert "ONNX export failed (opset 13)" in log and "Torch IR graph at exception" in log
    assert len(text.splitlines()) < 40


def test_the_deployable_model_is_stored_once_when_onnxruntime_leaves_it_unchanged(workspace, write_recipe,
                                                                                 run_bmbuild):
    import numpy as np

    np.savez(workspace / "recipes" / "calib.npz",
             x=np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32))
    recipe = write_recipe("conv", source={"model": "tiny_models.py:conv_relu"}, prec="INT8",
                          calibration={"data": "calib.npz", "samples": 8, "method": "minmax"},
                          int8={"cmp_samples": 4, "tolerance": {"cos": 0.9, "euclid": 0.3}})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    report = read_report("conv")
    assert list(report["stages"]["compile_fp32"]["outputs"]) == ["conv.onnx"]
    log = (workspace / "build" / "conv" / "logs" / "compile_fp32.log").read_text()
    assert "stored once" in log
    assert report["stages"]["compile_int8"]["metrics"]["cmp"]["b1/output"]["cos"] > 0.9  # int8 reads the one file

    # a graph onnxruntime does change keeps both files
    tiny = write_recipe("tiny")
    assert run_bmbuild("run", tiny, "--plain")[0] == 0
    assert set(read_report("tiny")["stages"]["compile_fp32"]["outputs"]) == {"tiny.onnx", "tiny.fp32.onnx"}


def test_model_source_is_an_input_of_compile_fp32_for_toolchains_that_export_it(workspace, write_recipe,
                                                                              run_bmbuild):
    import json

    recipe = write_recipe("tiny", source={"kwargs": {"channels": 3}})
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    manifest = json.loads((workspace / "build" / "tiny" / "compile_fp32" / ".bmbuild-manifest.json").read_text())
    components = manifest["components"]
    # the reference toolchain exports the eager module built from these: they are in its key
    assert "tiny_models.py" in components["inputs"]
    assert components["params"]["model"]["kwargs"] == {"channels": 3}


def test_only_toolchains_that_export_from_source_are_keyed_on_it(workspace, write_recipe):
    from bmbuild.recipe import load_recipe
    from bmbuild.stages.compile_fp32 import STAGE
    from bmbuild.toolchains.nntc import NntcToolchain
    from bmbuild.toolchains.reference import ReferenceToolchain

    loaded = load_recipe(write_recipe("tiny", source={"kwargs": {"channels": 3}}))
    params, files = STAGE.toolchain_inputs(loaded, ReferenceToolchain())
    assert params == {"model": {"callable": "tiny_cnn", "kwargs": {"channels": 3}, "weights_key": None,
                                "strip_prefix": None}}
    assert [f.name for f in files] == ["tiny_models.py"]
    assert STAGE.toolchain_inputs(loaded, NntcToolchain()) == ({}, [])  # bmnetp reads the traced file only
