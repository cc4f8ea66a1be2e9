"""The TVM toolchain with the real Apache TVM: libraries per batch size or with a symbolic batch,
compared and timed in the VM; the int8 path on bmbuild's own QDQ model; a model TVM cannot import;
caching, dry-run and `bmbuild toolchains`. Skipped only when tvm is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import read_report

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "int8"))
from int8_support import Int8Workspace, write_npz, ws8  # noqa: E402,F401

needs_tvm = pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                               reason="apache-tvm is not installed (pip install 'bmbuild[tvm]')")

TVM = {"toolchain": "tvm", "tvm": {"latency_runs": 3}}

RECURRENT = '''
import torch
from torch import nn


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 4, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def recurrent():
    torch.manual_seed(0)
    return Recurrent().eval()
'''


def run_library(path: Path, *arrays: np.ndarray) -> np.ndarray:
    """A library as a deployment would use it: loaded by tvm alone, run in a fresh VM."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def run_onnx(path: Path, array: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def metrics(name: str, stage: str) -> dict:
    return read_report(name)["stages"][stage]["metrics"]


# --- fp32 -----------------------------------------------------------------------------------------
@needs_tvm
def test_fp32_library_per_batch_size_compared_timed_and_cached(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny", batch_sizes=[1, 2], **TVM)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    folder = workspace / "build" / "tiny" / "compile_fp32"
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".so") == ["1b.fp32.so", "2b.fp32.so"]
    # each library runs on its own batch size and computes what the exported model computes
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_library(folder / "2b.fp32.so", x), run_onnx(folder / "tiny.onnx", x),
                               rtol=1e-5, atol=1e-5)
    assert run_library(folder / "1b.fp32.so", x[:1]).shape == (1, 2, 8, 8)
    found = metrics("tiny", "compile_fp32")
    assert set(found["cmp"]) == {"b1/output", "b2/output"}
    assert all(v["cos"] > 0.99999 and v["max_abs"] < 1e-4 for v in found["cmp"].values())
    assert set(found["latency"]) == {"b1", "b2"}
    for value in found["latency"].values():
        assert value["runs"] == 3 and value["ms"] > 0 and value["onnxruntime_ms"] > 0
    assert found["target"] == {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}
    summary = read_report("tiny")["stages"]["compile_fp32"]["summary"]
    assert re.search(r"latency b1 [0-9.e-]+ms \(onnxruntime [0-9.e-]+ms\), b2 ", summary), summary
    assert "onnxruntime" in out and "executable.cc" not in out + err

    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out, out + err
    assert set(outcomes("tiny").values()) == {"up-to-date"}


@needs_tvm
def test_dynamic_batch_builds_one_symbolic_library(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("tiny", batch_sizes=[1, 3], fp32={"dyn": True}, **TVM)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    folder = workspace / "build" / "tiny" / "compile_fp32"
    assert [p.name for p in folder.iterdir() if p.suffix == ".so"] == ["dyn.fp32.so"]
    for batch in (1, 3, 5):  # any batch size, also one the recipe does not name
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(run_library(folder / "dyn.fp32.so", x), run_onnx(folder / "tiny.onnx", x),
                                   rtol=1e-5, atol=1e-5)
    found = metrics("tiny", "compile_fp32")
    assert set(found["cmp"]) == {"b1/output", "b3/output"} and set(found["latency"]) == {"b1", "b3"}


@needs_tvm
@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
def test_an_operator_tvm_lacks_fails_with_the_frontends_message(workspace, write_recipe, run_bmbuild):
    (workspace / "recipes" / "recurrent.py").write_text(RECURRENT)
    recipe = write_recipe("rnn", source={"framework": "pytorch", "model": "recurrent.py:recurrent"},
                          shapes=[[1, 5, 8]], **TVM)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    error = read_report("rnn")["stages"]["compile_fp32"]["error"]
    assert "TVM's ONNX frontend cannot import rnn.onnx" in error
    assert "OpNotImplemented: The following operators are not supported for frontend ONNX: LSTM" in error
    assert "Traceback" not in out + err and error in out + err


@needs_tvm
def test_the_target_is_part_of_the_key_and_checked_by_tvm(workspace, write_recipe, run_bmbuild, outcomes):
    recipe = write_recipe("tiny", **TVM)
    assert run_bmbuild("run", recipe, "--plain")[0] == 0
    recipe = write_recipe("tiny", toolchain="tvm", tvm={"latency_runs": 0, "target": {"kind": "llvm", "mcpu": "haswell"}})
    code, out, err = run_bmbuild("plan", recipe)
    assert re.search(r"run\s+tiny:compile_fp32\s+parameter tvm: .*'haswell'", out), out
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {"trace": "up-to-date", "compile_fp32": "executed"}
    found = metrics("tiny", "compile_fp32")
    assert found["target"] == {"kind": "llvm", "mcpu": "haswell"} and "latency" not in found  # 0 runs: not timed
    recipe = write_recipe("tiny", toolchain="tvm", tvm={"target": {"kind": "llvm", "mcpu": "no-such-cpu-x"}})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 1
    assert 'tvm.target {"kind": "llvm", "mcpu": "no-such-cpu-x"} is not a TVM target' in \
        read_report("tiny")["stages"]["compile_fp32"]["error"]


def test_a_target_string_is_a_recipe_error_with_its_line(workspace, write_text_recipe, run_bmbuild):
    recipe = write_text_recipe("tiny.yaml", "name: tiny\ntoolchain: tvm\nsource: {framework: pytorch, "
                               "model: tiny_models.py:tiny_cnn}\nshapes: [[1, 3, 8, 8]]\n"
                               "tvm:\n  target: llvm -mcpu=skylake\n")
    code, out, err = run_bmbuild("validate", recipe)
    assert code == 2
    assert "tiny.yaml:6" in err and "tvm.target" in err and "mapping" in err and "Traceback" not in err


# --- int8 ------------------------------------------------------------------------------------------
@needs_tvm
def test_int8_compiles_bmbuilds_qdq_model_with_tvm(ws8: Int8Workspace):
    write_npz(ws8.recipes / "data" / "calib.npz")
    x = np.load(ws8.recipes / "data" / "calib.npz")["x"]
    np.savez(ws8.recipes / "data" / "eval.npz", x=x[:12], y=np.arange(12) % 10)
    recipe = ws8.recipe(batch_sizes=[1, 4], eval={"data": "data/eval.npz", "max_drop": 100}, **TVM)
    code, out, err = ws8.build(recipe)
    assert code == 0, out + err
    folder = ws8.stage_dir("compile_int8")
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".so") == ["1b.int8.so", "4b.int8.so"]
    found = ws8.metrics("compile_int8")
    assert set(found["cmp"]) == {"b1/output", "b4/output"}
    assert all(v["cos"] > 0.99 for v in found["cmp"].values())
    assert found["layers"] and set(found["latency"]) == {"b1", "b4"}
    assert found["eval"]["samples"] == 12 and 0 <= found["eval"]["int8"] <= 1
    assert "TVM runs the QDQ graph with float kernels" in ws8.report()["stages"]["compile_int8"]["summary"]
    # the library computes what onnxruntime computes on the same QDQ model (up to one step of
    # the int8 output: float kernels that differ in the last bit may round a tie the other way)
    umodel = ws8.stage_dir("quantize") / "tiny8.int8.onnx"
    import onnx
    from onnx import numpy_helper

    scales = {i.name: float(numpy_helper.to_array(i)) for i in onnx.load(str(umodel)).graph.initializer
              if i.name == "output_scale"}
    np.testing.assert_allclose(run_library(folder / "4b.int8.so", x[:4]), run_onnx(umodel, x[:4]),
                               rtol=1e-3, atol=max(1e-3, 1.0001 * scales.get("output_scale", 0.0)))
    # calibrate and quantize are the reference toolchain's: the same table and QDQ model
    produced = {stage: {p.name: p.read_bytes() for p in ws8.stage_dir(stage).iterdir() if p.is_file()
                        and not p.name.startswith(".")} for stage in ("calibrate", "quantize")}
    code, out, err = ws8.build(recipe, "--toolchain", "reference", "--stage", "quantize")
    assert code == 0, out + err
    for stage, files in produced.items():
        assert {p.name: p.read_bytes() for p in ws8.stage_dir(stage).iterdir() if p.is_file()
                and not p.name.startswith(".")} == files, stage


# --- dry run, listing, native output -----------------------------------------------------------
def test_dry_run_describes_every_library_and_runs_nothing(workspace, write_recipe, run_bmbuild):
    recipe = write_recipe("tiny", batch_sizes=[1, 4], **TVM)
    code, out, err = run_bmbuild("run", recipe, "--dry-run")
    assert code == 0, out + err
    build = workspace / "build" / "tiny" / "compile_fp32"
    assert (f"tvm.relax.frontend.onnx.from_onnx({build / 'tiny.onnx'}, batch 4) -> tvm.compile(target "
            f'{{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}}) -> {build / "4b.fp32.so"}') in out
    assert f"-> {build / '1b.fp32.so'}" in out and "median of 3 runs" in out
    assert "dry run: 2 of 2 stage(s) would run" in out and not (workspace / "build" / "tiny").exists()


def test_dry_run_of_int8_stages(ws8: Int8Workspace):
    recipe = ws8.recipe(fp32={"dyn": True}, int8={"dyn": True}, **TVM)
    code, out, err = ws8.run("run", recipe, "--dry-run")
    assert code == 0, out + err
    assert "bmbuild.calib.qdq" in out and "thresholds" in out  # the reference toolchain's steps
    assert f"-> {ws8.stage_dir('compile_int8') / 'dyn.int8.so'}" in out and "batch symbolic" in out
    assert "float kernels" in out


def test_toolchains_lists_tvm_with_its_llvm_or_why_not(workspace, run_bmbuild, monkeypatch):
    code, out, _ = run_bmbuild("toolchains")
    line = next(line for line in out.splitlines() if line.split()[:1] == ["tvm"])
    if importlib.util.find_spec("tvm") is not None:
        assert re.search(r"tvm\s+usable\s+apache-tvm \d+\.\d+\S*, LLVM \d+\.\d+", line), line
    import bmbuild.toolchains.tvm as tvm_toolchain

    real = importlib.util.find_spec
    monkeypatch.setattr(tvm_toolchain.importlib.util, "find_spec", lambda name: None if name == "tvm" else real(name))
    code, out, _ = run_bmbuild("toolchains")
    assert code == 0
    line = next(line for line in out.splitlines() if line.split()[:1] == ["tvm"])
    assert "not usable" in line
    assert "why: python packages missing: tvm (pip install 'bmbuild[tvm]')" in out


def test_a_tvm_recipe_without_tvm_stops_before_any_stage(workspace, write_recipe, run_bmbuild, monkeypatch):
    import bmbuild.toolchains.tvm as tvm_toolchain

    real = importlib.util.find_spec
    monkeypatch.setattr(tvm_toolchain.importlib.util, "find_spec", lambda name: None if name == "tvm" else real(name))
    code, out, err = run_bmbuild("run", write_recipe("tiny", **TVM), "--plain")
    assert code == 2 and "toolchain 'tvm' is not usable here" in err and "bmbuild[tvm]" in err
    assert not (workspace / "build" / "tiny").exists()


def test_native_output_goes_to_the_stage_log(tmp_path, capfd):
    from bmbuild.stagelog import StageLog
    from bmbuild.toolchains.tvm import native_output

    log = StageLog(tmp_path / "stage.log")
    log.info("before")
    ctx = SimpleNamespace(work_dir=tmp_path / "work", log=log)
    with native_output(ctx):  # type: ignore[arg-type]
        os.write(2, b"executable.cc:123: Warning: Scope main\n")
    log.info("after")
    log.close()
    assert "executable.cc" not in capfd.readouterr().err
    assert (tmp_path / "stage.log").read_text() == "before\nexecutable.cc:123: Warning: Scope main\nafter\n"
    os.write(2, b"back on stderr\n")
    assert "back on stderr" in capfd.readouterr().err


def test_listing_and_planning_import_neither_tvm_nor_torch(workspace, write_recipe):
    import subprocess

    from conftest import subprocess_env

    recipe = write_recipe("tiny", **TVM)
    probe = ("import sys, json\nfrom bmbuild.cli import main\nfrom bmbuild.toolchains.tvm import TvmToolchain\n"
             f"code = main(['plan', {str(recipe)!r}])\n"
             "t = TvmToolchain()\nprint(json.dumps([code, t.availability().version, t.versions(),\n"
             "      sorted(m for m in ('tvm', 'torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", probe], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    code, version, versions, heavy = json.loads(done.stdout.splitlines()[-1])
    assert code == 0 and heavy == []
    assert versions["implementation"] and "apache-tvm" in versions and json.loads(versions["defaults"])["target"]
    if importlib.util.find_spec("tvm") is not None:
        assert re.fullmatch(r"apache-tvm \S+, LLVM \d+(\.\d+)*", version), version
