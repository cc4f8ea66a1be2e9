"""The NNTC toolchain (bmbuild/toolchains/nntc.py) end to end against the NNTC test double.

The double (tests/nntc_double, README there) validates every command line against the vendor docs
and records it in $NNTC_DOUBLE_LOG; these tests read that log, the build folder and report.json.
The double is activated per test only: PATH and PYTHONPATH for the commands bmbuild starts, and
sys.path for the in-process detection (find_spec). Nothing in bmbuild knows about it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bmbuild.toolchains import nntc
from bmbuild.toolchains.bmodel_info import BmodelInfoError, parse_info
from bmbuild.commands import Command
from conftest import ROOT, deep_merge, plan_rows, read_report

DOUBLE = Path(__file__).resolve().parent / "nntc_double"
STAGES = ["trace", "compile_fp32", "calibrate", "quantize", "compile_int8"]
UMODEL_MAGIC = b"NNTC-DOUBLE-UMODEL\n"


# --- fixtures ---------------------------------------------------------------------------------
def activate(monkeypatch: pytest.MonkeyPatch, double: Path, log: Path) -> None:
    """The double on PATH/PYTHONPATH (for the commands) and sys.path (for find_spec)."""
    for name in list(os.environ):
        if name.startswith("NNTC_DOUBLE_"):
            monkeypatch.delenv(name)
    # the double's bin/ scripts start with `#!/usr/bin/env python3`
    monkeypatch.setenv("PATH", os.pathsep.join([str(double / "bin"), str(Path(sys.executable).parent),
                                                os.environ["PATH"]]))
    monkeypatch.setenv("PYTHONPATH", str(double / "python"))
    monkeypatch.setenv("NNTC_DOUBLE_LOG", str(log))
    monkeypatch.syspath_prepend(str(double / "python"))


@pytest.fixture
def double_log(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Activates the double; returns the file where it logs every invocation."""
    log = workspace.parent / "double.jsonl"
    activate(monkeypatch, DOUBLE, log)
    return log


@pytest.fixture
def nntc_recipe(workspace: Path, write_recipe: Any) -> Any:
    """nntc_recipe(name="tiny", **overrides) -> recipe path: the 2-conv net, INT8, batch sizes 1 and 2,
    calibrated on 8 of the 20 samples of recipes/calib.npz (4 more held out)."""
    rng = np.random.default_rng(0)
    np.savez(workspace / "recipes" / "calib.npz", x=rng.standard_normal((20, 3, 8, 8)).astype(np.float32))

    def write(name: str = "tiny", **overrides: Any) -> Path:
        base = {"toolchain": "nntc", "prec": "INT8", "batch_sizes": [1, 2],
                "calibration": {"data": "calib.npz", "key": "x", "samples": 8, "method": "kl"},
                "int8": {"cmp_samples": 4, "fp32_layers": ["conv2"]}}
        return write_recipe(name, **deep_merge(base, overrides))

    return write


def invocations(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def by_tool(log: Path, tool: str) -> list[list[str]]:
    return [entry["argv"] for entry in invocations(log) if entry["tool"] == tool]


def read_umodel(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    assert data.startswith(UMODEL_MAGIC)
    return json.loads(data[len(UMODEL_MAGIC):])


def cmd_lines(workspace: Path, name: str, stage: str) -> list[str]:
    text = (workspace / "build" / name / "logs" / f"{stage}.cmd").read_text()
    return [line for line in text.splitlines() if not line.startswith("#")]


def argv_of(line: str) -> list[str]:
    """A .cmd line back to argv (environment assignments and the `# cwd:` comment dropped)."""
    words = shlex.split(line, comments=True)
    return [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]


# --- the whole chain --------------------------------------------------------------------------
def test_chain_runs_every_documented_command(workspace, nntc_recipe, double_log, run_bmbuild, outcomes):
    recipe = nntc_recipe()
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 0, out + err
    assert outcomes("tiny") == {stage: "executed" for stage in STAGES}
    build = workspace.resolve() / "build" / "tiny"
    tmp = re.escape(str(build / ".tmp"))

    # compile_fp32: one bmnetp per batch size, documented flags and values
    bmnetp = by_tool(double_log, "bmnetp")
    assert len(bmnetp) == 2
    for batch, argv in zip((1, 2), bmnetp):
        assert argv[:7] == [f"--model={build}/trace/tiny.pt", f"--shapes=[[{batch},3,8,8]]", "--net_name=tiny",
                            "--target=BM1684", "--opt=1", "--dyn=False", "--cmp=True"]
        assert re.fullmatch(rf"--outdir={tmp}/compile_fp32-\w+/{batch}b\.fp32\.compilation", argv[7])
        assert len(argv) == 8  # no --enable_profile unless asked
    for batch in (1, 2):
        folder = build / "compile_fp32" / f"{batch}b.fp32.compilation"
        assert sorted(p.name for p in folder.iterdir()) == ["compilation.bmodel", "input_ref_data.dat",
                                                            "io_info.dat", "output_ref_data.dat"]

    # calibrate: pt_to_umodel on the traced model, then calibration_use_pb with the mapped flags
    (to_umodel,) = by_tool(double_log, "pt_to_umodel")
    work = re.match(rf"({tmp}/calibrate-\w+\.work)/", to_umodel[5] + "/").group(1)
    assert to_umodel == ["-m", f"{build}/compile_fp32/tiny.pt", "-s", "(1,3,8,8)", "-d", f"{work}/umodel",
                         "-D", f"{work}/lmdb", "-n", "tiny"]
    (cali,) = by_tool(double_log, "calibration_use_pb")
    assert cali == ["quantize", f"-model={work}/umodel/tiny_bmnetp_test_fp32.prototxt",
                    f"-weights={work}/umodel/tiny_bmnetp.fp32umodel", "-iterations=8", "-bitwidth=TO_INT8",
                    "-th_method=KL", "-fpfwd_outputs=conv2", "-per_channel=true"]
    assert sorted(p.name for p in (build / "calibrate").iterdir() if not p.name.startswith(".")) == [
        "tiny_bmnetp.int8umodel", "tiny_bmnetp_deploy_fp32_unique_top.prototxt",
        "tiny_bmnetp_deploy_int8_unique_top.prototxt"]
    assert not (build / ".tmp").exists() or not list((build / ".tmp").iterdir())  # the work dir is gone

    # quantize: the two files bmnetu needs
    assert sorted(p.name for p in (build / "quantize").iterdir() if not p.name.startswith(".")) == [
        "tiny_bmnetp.int8umodel", "tiny_bmnetp_deploy_int8_unique_top.prototxt"]
    calibration = read_umodel(build / "quantize" / "tiny_bmnetp.int8umodel")["calibration"]
    assert (calibration["samples"], calibration["iterations"]) == (8, 8)  # 8 LMDB records, batch 1

    # compile_int8: one bmnetu per batch size, then tpu_model --combine
    bmnetu = by_tool(double_log, "bmnetu")
    assert len(bmnetu) == 2
    for batch, argv in zip((1, 2), bmnetu):
        assert argv[:9] == [f"-model={build}/quantize/tiny_bmnetp_deploy_int8_unique_top.prototxt",
                            f"-weight={build}/quantize/tiny_bmnetp.int8umodel", "-prec=INT8",
                            f"-shapes=[{batch},3,8,8]", "-net_name=tiny", "-opt=2", "-dyn=False", "-cmp=True",
                            argv[8]]
        assert re.fullmatch(rf"-outdir={tmp}/compile_int8-\w+/{batch}b\.compilation", argv[8])
        assert argv[9:] == ["-target=BM1684"]
        assert (build / "compile_int8" / f"{batch}b.compilation" / "compilation.bmodel").is_file()
    tpu = by_tool(double_log, "tpu_model")
    combines = [argv for argv in tpu if argv[0] == "--combine"]
    assert len(combines) == 1 and combines[0][-2] == "-o" and combines[0][-1].endswith("/combined.bmodel")
    assert (build / "compile_int8" / "combined.bmodel").is_file()
    assert sum(argv[0] == "--info" for argv in tpu) == 5  # 2 fp32 + 2 int8 + combined

    # every command is in <stage>.cmd, re-runnable: the same argv the double received
    fp32_lines = cmd_lines(workspace, "tiny", "compile_fp32")
    assert [argv_of(line)[3:] for line in fp32_lines if " -m bmnetp " in line] == bmnetp
    assert [argv_of(line)[1:] for line in cmd_lines(workspace, "tiny", "compile_int8")
            if line.startswith("bmnetu ")] == bmnetu
    calibrate_lines = cmd_lines(workspace, "tiny", "calibrate")
    assert [argv_of(line)[0] for line in calibrate_lines] == [sys.executable, sys.executable, "calibration_use_pb"]
    assert argv_of(calibrate_lines[0])[1:3] == ["-m", "bmbuild.toolchains.nntc_lmdb"]
    assert argv_of(calibrate_lines[2])[1:] == cali
    assert all("# cwd: " in line for line in fp32_lines + calibrate_lines)

    # tpu_model --info of every bmodel, parsed into report.json
    report = read_report("tiny")
    assert report["toolchain"] == "nntc"
    fp32_info = report["stages"]["compile_fp32"]["metrics"]["bmodels"]
    assert sorted(fp32_info) == ["1b", "2b"]
    for batch in (1, 2):
        info = fp32_info[f"{batch}b"]
        assert info["chip"] == "BM1684"
        (net,) = info["nets"]
        assert (net["name"], net["dynamic"]) == ("tiny", False)
        (stage,) = net["stages"]
        assert stage["inputs"] == [{"name": "input.1", "shape": [batch, 3, 8, 8], "dtype": "float32", "scale": 1}]
        assert stage["outputs"][0]["shape"] == [batch, 1000]
        assert info["device_mem"]["total"] == sum(info["device_mem"][k] for k in ("coeff", "instruct", "runtime"))
        assert "host_mem" in info
    int8_info = report["stages"]["compile_int8"]["metrics"]["bmodels"]
    assert sorted(int8_info) == ["1b", "2b", "combined"]
    assert int8_info["1b"]["nets"][0]["stages"][0]["inputs"][0]["dtype"] == "int8"
    assert int8_info["1b"]["nets"][0]["stages"][0]["inputs"][0]["scale"] == 0.0078125
    assert [s["inputs"][0]["shape"][0] for s in int8_info["combined"]["nets"][0]["stages"]] == [1, 2]
    assert report["stages"]["calibrate"]["metrics"]["th_method"] == "KL"


def test_second_run_is_a_no_op(workspace, nntc_recipe, double_log, run_bmbuild, outcomes):
    recipe = nntc_recipe()
    assert run_bmbuild("run", recipe)[0] == 0
    before = len(invocations(double_log))
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and "nothing to do" in out
    assert outcomes("tiny") == {stage: "up-to-date" for stage in STAGES}
    assert len(invocations(double_log)) == before  # no vendor command ran


def test_a_cache_hit_restores_the_command_lines(workspace, nntc_recipe, double_log, run_bmbuild, outcomes):
    recipe = nntc_recipe()
    assert run_bmbuild("run", recipe)[0] == 0
    logs = workspace / "build" / "tiny" / "logs"
    written = {p.name: p.read_text() for p in logs.glob("*.cmd")}
    assert {"compile_fp32.cmd", "calibrate.cmd", "compile_int8.cmd"} <= set(written)
    shutil.rmtree(workspace / "build")
    before = len(invocations(double_log))
    code, out, _ = run_bmbuild("run", recipe, "--plain")
    assert code == 0 and len(invocations(double_log)) == before
    assert outcomes("tiny") == {stage: "restored" for stage in STAGES}
    assert {p.name: p.read_text() for p in logs.glob("*.cmd")} == written


def test_lmdb_holds_the_reference_calibration_samples(workspace, nntc_recipe, double_log, tmp_path):
    """The LMDB writer selects and loads samples with the reference toolchain's code (calib.dataset)."""
    from bmbuild.calib.dataset import SampleLoader
    from bmbuild.recipe import load_recipe
    from bmbuild.calib.feeds import split

    loaded = load_recipe(nntc_recipe())
    cfg = loaded.recipe.calibration
    out = tmp_path / "lmdb"
    done = subprocess.run([sys.executable, "-m", "bmbuild.toolchains.nntc_lmdb", "--calibration",
                           cfg.model_dump_json(), "--holdout", "4", "--input-shape", "1,3,8,8", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), os.environ["PYTHONPATH"]])})
    assert done.returncode == 0, done.stderr
    assert "wrote 8 calibration samples" in done.stdout
    records = read_lmdb(out / "data.mdb")
    refs, holdout = split(loaded.recipe)
    loader = SampleLoader(cfg, (3, 8, 8))
    assert len(records) == len(refs) == 8
    for (shape, dtype, payload), ref in zip(records, refs):
        assert (shape, dtype) == ([1, 3, 8, 8], "float32")
        np.testing.assert_array_equal(np.frombuffer(payload, "<f4").reshape(1, 3, 8, 8), loader.load(ref)[None])
    assert not {r.index for r in refs} & {r.index for r in holdout}


def read_lmdb(path: Path) -> list[tuple[list[int], str, bytes]]:
    """The double's data.mdb format (its README), read independently."""
    records = []
    with open(path, "rb") as handle:
        assert handle.readline() == b"NNTC-DOUBLE-LMDB 1\n"
        while line := handle.readline():
            header = json.loads(line)
            records.append((header["shape"], header["dtype"], handle.read(header["nbytes"])))
    return records


# --- mappings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method, th_method", [("minmax", "MAX"), ("percentile", "PERCENTILE9999"),
                                               ("kl", "KL"), ("mse", "MSE")])
def test_method_maps_to_th_method(workspace, nntc_recipe, double_log, run_bmbuild, outcomes, method, th_method):
    recipe = nntc_recipe(calibration={"method": method}, int8={"fp32_layers": ["conv1", "conv2"]})
    code, out, err = run_bmbuild("run", recipe, "--stage", "calibrate")
    assert code == 0, out + err
    (argv,) = by_tool(double_log, "calibration_use_pb")
    assert f"-th_method={th_method}" in argv
    assert "-fpfwd_outputs=conv1,conv2" in argv
    deploy = (workspace / "build/tiny/calibrate/tiny_bmnetp_deploy_int8_unique_top.prototxt").read_text()
    meta = json.loads(re.search(r"# nntc-double-meta: (.*)", deploy).group(1))
    assert (meta["th_method"], meta["fpfwd_outputs"]) == (th_method, ["conv1", "conv2"])


def test_no_fp32_layers_passes_no_fpfwd_outputs(workspace, nntc_recipe, double_log, run_bmbuild):
    recipe = nntc_recipe(int8={"fp32_layers": []})
    assert run_bmbuild("run", recipe, "--stage", "calibrate")[0] == 0
    (argv,) = by_tool(double_log, "calibration_use_pb")
    assert not [a for a in argv if a.startswith("-fpfwd_outputs")]


def test_other_percentiles_are_refused_with_the_recipe_line(workspace, nntc_recipe, double_log, run_bmbuild):
    recipe = nntc_recipe(calibration={"method": "percentile", "percentile": 99.9})
    code, out, err = run_bmbuild("run", recipe, "--plain")
    assert code == 2  # a recipe error, although found by the calibrate stage (errors.py: exit codes)
    assert "supports only percentile 99.99" in out + err and "calibration.percentile" in out + err
    assert f"{recipe.name}:" in out + err
    assert by_tool(double_log, "calibration_use_pb") == []


def test_enable_profile_and_options_reach_bmnetp_and_bmnetu(workspace, nntc_recipe, double_log, run_bmbuild):
    recipe = nntc_recipe(batch_sizes=[4], fp32={"opt": 2, "dyn": True, "cmp": False, "enable_profile": True},
                         int8={"opt": 0, "dyn": True, "cmp": False})
    code, out, err = run_bmbuild("run", recipe)
    assert code == 0, out + err
    (bmnetp,) = by_tool(double_log, "bmnetp")
    assert bmnetp[1:7] == ["--shapes=[[4,3,8,8]]", "--net_name=tiny", "--target=BM1684", "--opt=2", "--dyn=True",
                           "--cmp=False"] and bmnetp[-1] == "--enable_profile=True"
    (bmnetu,) = by_tool(double_log, "bmnetu")
    assert bmnetu[3:8] == ["-shapes=[4,3,8,8]", "-net_name=tiny", "-opt=0", "-dyn=True", "-cmp=False"]
    assert not [a for a in by_tool(double_log, "tpu_model") if a[0] == "--combine"]  # one batch size
    info = read_report("tiny")["stages"]["compile_int8"]["metrics"]["bmodels"]
    assert sorted(info) == ["4b"] and info["4b"]["nets"][0]["dynamic"] is True


# --- failures ---------------------------------------------------------------------------------
@pytest.mark.parametrize("switch, tool, stage, message", [
    ("NNTC_DOUBLE_FAIL", "bmnetp", "compile_fp32", "bmnetp failed"),
    ("NNTC_DOUBLE_FAIL", "pt_to_umodel", "calibrate", "pt_to_umodel failed"),
    ("NNTC_DOUBLE_FAIL", "calibration_use_pb", "calibrate", "calibration_use_pb failed"),
    ("NNTC_DOUBLE_FAIL", "bmnetu", "compile_int8", "bmnetu failed"),
    ("NNTC_DOUBLE_NO_BANNER", "bmnetp", "compile_fp32", "without its success banner"),
    ("NNTC_DOUBLE_NO_BANNER", "bmnetu", "compile_int8", "without its success banner"),
    ("NNTC_DOUBLE_NO_OUTPUT", "bmnetp", "compile_fp32", "did not write"),
    ("NNTC_DOUBLE_NO_OUTPUT", "calibration_use_pb", "calibrate", "did not write"),
    ("NNTC_DOUBLE_NO_OUTPUT", "bmnetu", "compile_int8", "did not write"),
    ("NNTC_DOUBLE_NO_OUTPUT", "tpu_model", "compile_fp32", "tpu_model --info"),
])
def test_a_failing_tool_fails_its_stage_with_the_log_tail(workspace, nntc_recipe, double_log, run_bmbuild,
                                                          outcomes, monkeypatch, switch, tool, stage, message):
    recipe = nntc_recipe(batch_sizes=[1])
    monkeypatch.setenv(switch, tool)
    code, out, err = run_bmbuild("run", recipe, "--plain")
    text = out + err
    assert code == 1, text
    assert f"tiny:{stage} failed: " in text and message in text
    assert "command: " in text and ("log tail:" in text or "output tail:" in text)
    if switch == "NNTC_DOUBLE_FAIL":
        assert "exit code: 1" in text and "failing on purpose" in text  # the tool's own message
    states = outcomes("tiny")
    assert states[stage] == "failed"
    later = STAGES[STAGES.index(stage) + 1:]
    assert all(states.get(s, "blocked") == "blocked" for s in later)
    assert not (workspace / "build" / "tiny" / stage).exists()  # nothing half-done is published
    assert (workspace / "build" / "tiny" / "logs" / f"{stage}.cmd").is_file()


def test_calibration_compare_abort_is_reported(workspace, nntc_recipe, double_log, run_bmbuild, monkeypatch):
    monkeypatch.setenv("NNTC_DOUBLE_CALI_MAX_DIFF", "0.5")
    code, out, err = run_bmbuild("run", nntc_recipe(), "--plain")
    assert code == 1 and "max diff = 0.5 Fail" in out + err


# --- keys -------------------------------------------------------------------------------------
def test_toolchain_versions_are_part_of_every_key(workspace, nntc_recipe, run_bmbuild, monkeypatch, tmp_path):
    double = tmp_path / "double"
    shutil.copytree(DOUBLE, double, ignore=shutil.ignore_patterns("__pycache__"))
    activate(monkeypatch, double, tmp_path / "double.jsonl")
    versions = nntc.NntcToolchain().versions()
    assert {versions[m] for m in ("bmnetp", "bmnetu", "ufw", "ufwio")} == {"2.7.0-double"}
    assert all(versions[f"{c} (command)"].startswith("sha256:") for c in nntc.EXECUTABLES)
    recipe = nntc_recipe()
    assert run_bmbuild("run", recipe)[0] == 0

    # another build of one SDK command: every toolchain stage is stale, trace is not
    with open(double / "bin" / "bmnetu", "a") as handle:
        handle.write("# rebuilt\n")
    code, out, _ = run_bmbuild("plan", recipe)
    rows = plan_rows(out)
    assert rows["tiny:trace"][0] == "up-to-date"
    assert rows["tiny:compile_fp32"][0] == "run" and "toolchain changed" in rows["tiny:compile_fp32"][1]
    assert run_bmbuild("run", recipe)[0] == 0

    # a new version of an SDK Python package (a fresh process would read it again)
    init = double / "python" / "_nntc_double" / "__init__.py"
    init.write_text(init.read_text().replace("2.7.0-double", "2.7.1-double"))
    monkeypatch.setattr(nntc, "_probed", {})
    assert nntc.NntcToolchain().versions()["bmnetp"] == "2.7.1-double"
    code, out, _ = run_bmbuild("plan", recipe)
    assert plan_rows(out)["tiny:compile_fp32"][0] == "run"


# --- dry run ----------------------------------------------------------------------------------
def test_dry_run_prints_the_commands_and_runs_nothing(workspace, nntc_recipe, double_log, run_bmbuild):
    recipe = nntc_recipe(calibration={"method": "mse"})
    code, out, err = run_bmbuild("run", recipe, "--dry-run")
    assert code == 0, out + err
    assert not (workspace / "build").exists() or not any((workspace / "build").iterdir())
    assert invocations(double_log) == []
    build = workspace.resolve() / "build" / "tiny"
    assert "[in-process] torch.jit.trace(tiny_models.py:tiny_cnn()" in out
    for batch in (1, 2):
        assert (f"-m bmnetp --model={build}/trace/tiny.pt '--shapes=[[{batch},3,8,8]]' --net_name=tiny "
                f"--target=BM1684 --opt=1 --dyn=False --cmp=True "
                f"--outdir={build}/compile_fp32/{batch}b.fp32.compilation") in out
        assert (f"bmnetu -model={build}/quantize/tiny_bmnetp_deploy_int8_unique_top.prototxt "
                f"-weight={build}/quantize/tiny_bmnetp.int8umodel -prec=INT8 '-shapes=[{batch},3,8,8]' "
                f"-net_name=tiny -opt=2 -dyn=False -cmp=True -outdir={build}/compile_int8/{batch}b.compilation "
                "-target=BM1684") in out
    assert "-m bmbuild.toolchains.nntc_lmdb" in out
    assert f"-m ufw.tools.pt_to_umodel -m {build}/compile_fp32/tiny.pt -s '(1,3,8,8)'" in out
    assert "calibration_use_pb quantize" in out and "-iterations=8 -bitwidth=TO_INT8 -th_method=MSE" in out
    assert f"tpu_model --combine {build}/compile_int8/1b.compilation/compilation.bmodel" in out
    assert "dry run: 5 of 5 stage(s) would run; nothing was run" in out

    # after a build, nothing would run
    assert run_bmbuild("run", recipe)[0] == 0
    before = len(invocations(double_log))
    code, out, _ = run_bmbuild("run", recipe, "--dry-run")
    assert code == 0 and "dry run: 0 of 5 stage(s) would run" in out
    assert "bmnetp" not in out and len(invocations(double_log)) == before


def test_dry_run_of_the_reference_toolchain_describes_its_steps(workspace, nntc_recipe, run_bmbuild):
    recipe = nntc_recipe(toolchain="reference")
    code, out, err = run_bmbuild("run", recipe, "--dry-run")
    assert code == 0, out + err
    assert "torch.onnx.export(" in out and "QDQ int8 model of what the target runs in int8" in out
    assert not (workspace / "build").exists() or not any((workspace / "build").iterdir())


def test_dry_run_without_the_sdk_still_shows_the_commands(workspace, nntc_recipe, run_bmbuild):
    code, out, err = run_bmbuild("run", nntc_recipe(), "--dry-run")
    assert code == 0, out + err
    assert "toolchain 'nntc' is not usable here" in out and "bmnetu -model=" in out


def test_dry_run_reports_recipe_errors_per_stage(workspace, nntc_recipe, double_log, run_bmbuild):
    recipe = nntc_recipe(target="BM1684X")
    code, out, _ = run_bmbuild("run", recipe, "--dry-run")
    assert code == 2 and "error:" in out and "BM1684 only" in out and "target" in out


# --- detection --------------------------------------------------------------------------------
def test_toolchains_explains_what_is_missing(workspace, run_bmbuild, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no SDK commands
    code, out, _ = run_bmbuild("toolchains")
    assert code == 0
    nntc_line = next(line for line in out.splitlines() if line.split()[:1] == ["nntc"])
    assert "not usable" in nntc_line
    why = out[out.index(nntc_line):]
    assert "bmnetp, bmnetu, ufw, ufwio" in why and "bmnetu, calibration_use_pb, tpu_model" in why
    assert "envsetup" in why
    assert "auto picks: reference" in out


def test_toolchains_with_the_sdk(workspace, double_log, run_bmbuild):
    code, out, _ = run_bmbuild("toolchains")
    assert code == 0
    assert re.search(r"nntc\s+usable\s+bmnetp 2\.7\.0-double", out)
    assert "auto picks: nntc" in out


def test_auto_picks_nntc_when_installed(workspace, nntc_recipe, double_log, run_bmbuild):
    recipe = nntc_recipe(toolchain="auto")
    code, out, err = run_bmbuild("run", recipe, "--stage", "compile_fp32")
    assert code == 0, out + err
    assert read_report("tiny")["toolchain"] == "nntc" and len(by_tool(double_log, "bmnetp")) == 2


def test_nntc_without_the_sdk_fails_before_any_stage(workspace, nntc_recipe, run_bmbuild):
    for args in ([], ["--toolchain", "nntc"]):
        recipe = nntc_recipe(toolchain="nntc" if not args else "reference")
        code, out, err = run_bmbuild("run", recipe, *args)
        assert code == 2
        assert "toolchain 'nntc' is not usable here" in err and "bmnetp" in err and "tpu_model" in err
        assert not (workspace / "build").exists()


# --- units ------------------------------------------------------------------------------------
INFO = """bmodel version: B.2.2
chip: BM1684
create time: Mon Jun  6 10:37:28 2022

==========================================
net 0: [yolo]  dynamic
------------
stage 0:
input: images, [1, 3, 640, 640], int8, scale: 0.00787, zero_point: 0
output: < 12 >17, [1, 25200, 85], float32, scale: 1
------------
stage 1:
input: images, [4, 3, 640, 640], int8, scale: 0.00787, zero_point: 0
output: < 12 >17, [4, 25200, 85], float32, scale: 1

device mem size: 30000 (coeff: 20000, instruct: 4000, runtime: 6000)
host mem size: 0 (coeff: 0, runtime: 0)
"""


def test_parse_info():
    info = parse_info(INFO)
    assert (info["chip"], info["bmodel_version"]) == ("BM1684", "B.2.2")
    (net,) = info["nets"]
    assert net["name"] == "yolo" and net["dynamic"] is True and len(net["stages"]) == 2
    assert net["stages"][1]["inputs"] == [{"name": "images", "shape": [4, 3, 640, 640], "dtype": "int8",
                                           "scale": 0.00787, "zero_point": 0}]
    assert net["stages"][0]["outputs"][0]["name"] == "< 12 >17"
    assert info["device_mem"] == {"total": 30000, "coeff": 20000, "instruct": 4000, "runtime": 6000}
    assert info["host_mem"]["total"] == 0
    with pytest.raises(BmodelInfoError):
        parse_info("")


def test_command_lines_are_shell_quoted(tmp_path):
    command = Command("bmnetu", ("bmnetu", "-shapes=[1,3,8,8]", "-fpfwd_outputs=< 12 >17"), tmp_path / "a b",
                      env={"PYTHONPATH": "/x y"})
    line = command.shell()
    assert line.startswith("PYTHONPATH='/x y' bmnetu '-shapes=[1,3,8,8]' '-fpfwd_outputs=< 12 >17'")
    assert shlex.split(line, comments=True) == ["PYTHONPATH=/x y", *command.argv]


def test_value_spellings():
    assert nntc.shapes_nested([[1, 3, 8, 8], [1, 10]]) == "[[1,3,8,8],[1,10]]"
    assert nntc.shapes_flat([[1, 3, 8, 8], [1, 10]]) == "[1,3,8,8],[1,10]"
    assert nntc.shape_tuple([1, 3, 8, 8]) == "(1,3,8,8)"
    assert (nntc.py_bool(True), nntc.gflags_bool(False)) == ("True", "false")


# --- the example recipe -----------------------------------------------------------------------
def test_resnet_example_builds_with_nntc(workspace, double_log, run_bmbuild, outcomes):
    shutil.copytree(ROOT / "recipes", workspace / "recipes", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    code, out, err = run_bmbuild("run", "recipes/resnet.yaml", "--toolchain", "nntc", "--plain")
    assert code == 0, out + err
    assert outcomes("resnet18") == {stage: "executed" for stage in STAGES}
    (cali,) = by_tool(double_log, "calibration_use_pb")
    assert "-iterations=64" in cali and "-th_method=KL" in cali
    info = read_report("resnet18")["stages"]["compile_int8"]["metrics"]["bmodels"]
    assert sorted(info) == ["1b", "4b", "combined"]
    assert info["4b"]["nets"][0]["stages"][0]["inputs"][0]["shape"] == [4, 3, 224, 224]
