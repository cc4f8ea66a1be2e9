"""Tests of the NNTC test double (tests/nntc_double): every command through subprocess, good and bad.

The double is never put on this process's sys.path, so `import bmnetp` stays unavailable to the
other tests; its formats are read here with a few lines of independent code.
"""
import json
import os
import re
import struct
import subprocess
import sys
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "nntc_double")
BANNER = "######################################\n# Store bmodel of BMCompiler.\n######################################"
GOOD_BMNETP = ["--shapes=[[1,3,8,8]]", "--net_name=net", "--target=BM1684", "--opt=1", "--dyn=False", "--cmp=True"]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("NNTC_DOUBLE_"):
            del e[k]
    e["PATH"] = os.pathsep.join([os.path.join(DOUBLE, "bin"), os.path.dirname(sys.executable), e.get("PATH", "")])
    e["PYTHONPATH"] = os.path.join(DOUBLE, "python")
    e["NNTC_DOUBLE_LOG"] = str(tmp_path / "log.jsonl")
    return e


@pytest.fixture
def ws(tmp_path, env):
    """A work dir with a TorchScript-like zip `net.pt` and an LMDB of 8 samples [1,3,8,8]."""
    with zipfile.ZipFile(tmp_path / "net.pt", "w") as z:
        z.writestr("net/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("net/code/__torch__.py", "class Net: pass\n")
    write_lmdb(tmp_path / "lmdb", [[1, 3, 8, 8]] * 8)
    return tmp_path


def write_lmdb(folder, shapes, dtype="float32"):
    """The double's data.mdb format (README), written without numpy or ufwio."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.mdb", "wb") as f:
        f.write(b"NNTC-DOUBLE-LMDB 1\n")
        for i, shape in enumerate(shapes):
            n = 4 * eval("*".join(map(str, shape)))
            rec = {"key": "%010d" % i, "dtype": dtype, "shape": shape, "label": None, "nbytes": n}
            f.write((json.dumps(rec) + "\n").encode() + bytes(n))
    (folder / "lock.mdb").write_bytes(b"")


def run(cmd, env, cwd, **kw):
    if cmd[0] in ("bmnetp", "pt_to_umodel"):
        cmd = [sys.executable, "-m", {"bmnetp": "bmnetp", "pt_to_umodel": "ufw.tools.pt_to_umodel"}[cmd[0]]] + cmd[1:]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, **kw)


def log(env):
    with open(env["NNTC_DOUBLE_LOG"]) as f:
        return [json.loads(line) for line in f]


def meta(path):
    for line in open(path):
        if line.startswith("# nntc-double-meta: "):
            return json.loads(line.split(": ", 1)[1])
    raise AssertionError(f"no meta in {path}")


def read_bmodel(path):
    data = open(path, "rb").read()
    magic = b"NNTC-DOUBLE-BMODEL\x00"
    assert data.startswith(magic)
    _, n = struct.unpack("<IQ", data[len(magic):len(magic) + 12])
    return json.loads(data[len(magic) + 12:][:n])


def parse_info(text):
    """Parse `tpu_model --info` text: header fields, nets with stages of (kind, name, shape, dtype, scale)."""
    head = dict(re.findall(r"^(bmodel version|chip|create time): (.*)$", text, re.M))
    nets = []
    for line in text.splitlines():
        if m := re.fullmatch(r"net (\d+): \[(.+)\]  (static|dynamic)", line):
            nets.append({"name": m.group(2), "kind": m.group(3), "stages": []})
        elif re.fullmatch(r"stage \d+:", line):
            nets[-1]["stages"].append([])
        elif m := re.fullmatch(r"(input|output): (.+), \[([0-9, ]+)\], (\w+), scale: ([0-9.e-]+)", line):
            nets[-1]["stages"][-1].append((m.group(1), m.group(2), [int(d) for d in m.group(3).split(", ")],
                                           m.group(4), float(m.group(5))))
    mem = re.search(r"^device mem size: (\d+) \(coeff: (\d+), instruct: (\d+), runtime: (\d+)\)$", text, re.M)
    assert mem and int(mem.group(1)) == sum(int(mem.group(i)) for i in (2, 3, 4))
    assert re.search(r"^host mem size: \d+ \(coeff: \d+, runtime: \d+\)$", text, re.M)
    return head, nets


def make_int8(ws, env, extra=()):
    """pt_to_umodel + calibration_use_pb; returns the umodel folder."""
    r = run(["pt_to_umodel", "-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "lmdb", "-n", "net"], env, ws)
    assert r.returncode == 0, r.stderr
    r = run(["calibration_use_pb", "quantize", "-model=um/net_bmnetp_test_fp32.prototxt",
             "-weights=um/net_bmnetp.fp32umodel", "-iterations=8", "-bitwidth=TO_INT8", *extra], env, ws)
    assert r.returncode == 0, r.stderr
    return ws / "um"


INT8 = ["-model=um/net_bmnetp_deploy_int8_unique_top.prototxt", "-weight=um/net_bmnetp.int8umodel",
        "-prec=INT8", "-net_name=net", "-opt=2", "-dyn=False", "-cmp=True", "-target=BM1684"]


# ---------------------------------------------------------------- bmnetp

def test_bmnetp_compiles_and_logs(ws, env):
    argv = ["--model=net.pt", *GOOD_BMNETP, "--outdir=out", "--enable_profile=True"]
    r = run(["bmnetp", *argv], env, ws)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(BANNER)
    for name in ("compilation.bmodel", "input_ref_data.dat", "output_ref_data.dat", "io_info.dat"):
        assert (ws / "out" / name).is_file()
    assert (ws / "out/input_ref_data.dat").stat().st_size == 4 * 3 * 8 * 8
    assert log(env) == [{"tool": "bmnetp", "argv": argv, "cwd": str(ws)}]
    net = read_bmodel(ws / "out/compilation.bmodel")["nets"][0]
    assert (net["name"], net["prec"], net["dynamic"]) == ("net", "FP32", False)
    assert net["stages"][0]["source"]["enable_profile"] is True


def test_bmnetp_cmp_false_writes_only_the_bmodel(ws, env):
    r = run(["bmnetp", "--model=net.pt", "--shapes=[[2,3,8,8]]", "--net_name=net", "--target=BM1684",
             "--cmp=False", "--dyn=True", "--outdir=out"], env, ws)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(ws / "out")) == ["compilation.bmodel"]
    assert read_bmodel(ws / "out/compilation.bmodel")["nets"][0]["dynamic"] is True


def test_bmnetp_python_api(ws, env):
    code = ("import bmnetp; print(bmnetp.__version__); bmnetp.compile(model='net.pt', outdir='api', "
            "target='BM1684', shapes=[[1,3,8,8],[1,4]], net_name='net', opt=2, dyn=False, cmp=True)")
    r = run([sys.executable, "-c", code], env, ws)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("2.7.0-double\n") and r.stdout.rstrip().endswith(BANNER)
    (entry,) = log(env)
    assert entry["api"] == "bmnetp.compile" and entry["kwargs"]["shapes"] == [[1, 3, 8, 8], [1, 4]]
    ins = read_bmodel(ws / "api/compilation.bmodel")["nets"][0]["stages"][0]["inputs"]
    assert [t["shape"] for t in ins] == [[1, 3, 8, 8], [1, 4]]
    bad = code.replace("opt=2", "opt='2'")
    r = run([sys.executable, "-c", bad], env, ws)
    assert r.returncode != 0 and "opt must be 0, 1 or 2" in r.stderr


@pytest.mark.parametrize("change, extra, message", [
    ({"shapes": "[1,3,8,8]"}, [], "is not of the form [[x,x,x,x]"),
    ({"shapes": "[[1, 3, 8, 8]]"}, [], "no spaces"),
    ({"shapes": "[[1,3,0,8]]"}, [], "positive integers"),
    ({"shapes": "(1,3,8,8)"}, [], "is not of the form"),
    ({}, ["--foo=1"], "unrecognized arguments: --foo=1"),
    ({"target": "BM1684X"}, [], "invalid choice: 'BM1684X'"),
    ({"dyn": "false"}, [], "expected True or False"),
    ({"cmp": "1"}, [], "expected True or False"),
    ({"opt": "3"}, [], "invalid choice: '3'"),
    ({"mode": "GenUmodel"}, [], "not modelled"),
    ({"net_name": None}, ["--net_name", "x"], "must be written --net_name=<value>"),
    ({}, ["--opt=1"], "given more than once"),
])
def test_bmnetp_rejects(ws, env, change, extra, message):
    flags = {"model": "net.pt", "shapes": "[[1,3,8,8]]", "net_name": "net", "target": "BM1684", "opt": "1",
             "outdir": "out"}
    flags.update(change)
    r = run(["bmnetp"] + [f"--{k}={v}" for k, v in flags.items() if v is not None] + extra, env, ws)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (ws / "out").exists() and BANNER not in r.stdout


def test_bmnetp_requires_target_and_a_torchscript_zip(ws, env):
    r = run(["bmnetp", "--model=net.pt", "--shapes=[[1,3,8,8]]", "--net_name=n", "--outdir=o"], env, ws)
    assert r.returncode == 2 and "required: --target" in r.stderr
    (ws / "plain.pt").write_bytes(b"not a zip")
    with zipfile.ZipFile(ws / "other.pt", "w") as z:
        z.writestr("weights.bin", b"x")
    for model in ("plain.pt", "other.pt", "missing.pt"):
        r = run(["bmnetp", f"--model={model}", *GOOD_BMNETP, "--outdir=o"], env, ws)
        assert r.returncode == 1 and ("TorchScript" in r.stderr or "does not exist" in r.stderr), r.stderr
    assert not (ws / "o").exists()


# ---------------------------------------------------------------- pt_to_umodel + ufwio

def test_pt_to_umodel_names_and_data_source(ws, env):
    r = run(["pt_to_umodel", "-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "lmdb", "--cmp"], env, ws)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(ws / "um")) == ["net_bmnetp.fp32umodel", "net_bmnetp_test_fp32.prototxt"]
    text = (ws / "um/net_bmnetp_test_fp32.prototxt").read_text()
    assert re.search(r'data_param \{\s*source: "lmdb"\s*batch_size: 1\s*backend: LMDB', text)
    assert meta(ws / "um/net_bmnetp_test_fp32.prototxt")["kind"] == "test_fp32"
    (ws / "x.torchscript").write_bytes((ws / "net.pt").read_bytes())
    code = ("import ufw, ufw.tools as t; print(ufw.__version__); "
            "t.pt_to_umodel(['-m','x.torchscript','-s','(1,3,8,8)','-d','um2','-D','lmdb'])")
    r = run([sys.executable, "-c", code], env, ws)
    assert r.returncode == 0, r.stderr
    assert (ws / "um2/x.torchscript_bmnetp.fp32umodel").is_file()
    assert log(env)[-1]["api"] == "ufw.tools.pt_to_umodel"


@pytest.mark.parametrize("argv, message", [
    (["-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "empty"], "no data.mdb"),
    (["-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um"], "required: -D"),
    (["-m", "net.pt", "-s", "[1,3,8,8]", "-d", "um", "-D", "lmdb"], "(N,C,H,W)"),
    (["-m", "net.pt", "-s", "(1,3,8,8),(1,3)", "-d", "um", "-D", "lmdb"], "(N,C,H,W)"),
    (["-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "lmdb", "-x", "1"], "unrecognized arguments"),
    (["-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D"], "expected one argument"),
    (["-m=net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "lmdb"], "unrecognized arguments: -m=net.pt"),
])
def test_pt_to_umodel_rejects(ws, env, argv, message):
    (ws / "empty").mkdir()
    r = run(["pt_to_umodel", *argv], env, ws)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (ws / "um").exists()


def test_ufwio_writes_what_calibration_reads(ws, env):
    pytest.importorskip("numpy")
    code = """if 1:
        import numpy as np, ufwio
        with ufwio.LMDB_Dataset('cal') as db:
            for i in range(3):
                db.put(np.full((1, 3, 8, 8), i, np.float32))
        keys = [(k, float(a.mean()), a.shape) for k, a in ufwio.lmdb_data('cal')]
        print(keys)
        try:
            ufwio.LMDB_Dataset('bad').put(np.zeros((1, 3, 8, 8)))
        except TypeError as e:
            print('refused', e)
    """
    r = run([sys.executable, "-c", code], env, ws)
    assert r.returncode == 0, r.stderr
    assert "('0000000002', 2.0, (1, 3, 8, 8))" in r.stdout and "refused" in r.stdout and "float64" in r.stdout
    assert (ws / "cal/data.mdb").is_file() and (ws / "cal/lock.mdb").is_file()


# ---------------------------------------------------------------- calibration_use_pb

def test_calibration_outputs_record_the_settings(ws, env):
    um = make_int8(ws, env, ["-th_method=SYMKL", "-per_channel=true", "-fpfwd_outputs=< 12 >17,head.conv"])
    names = ["net_bmnetp.int8umodel", "net_bmnetp_deploy_int8_unique_top.prototxt",
             "net_bmnetp_deploy_fp32_unique_top.prototxt"]
    assert all((um / n).is_file() for n in names)
    m = meta(um / "net_bmnetp_deploy_int8_unique_top.prototxt")
    assert (m["kind"], m["th_method"], m["fpfwd_outputs"], m["per_channel"]) == \
        ("deploy_int8", "SYMKL", ["< 12 >17", "head.conv"], True)
    assert "dim: 1 dim: 3 dim: 8 dim: 8" in (um / names[1]).read_text()
    assert log(env)[-1]["argv"][0] == "quantize"


@pytest.mark.parametrize("change, message", [
    ({"-th_method": "kl"}, "-th_method='kl'"),
    ({"-iterations": "9"}, "needs 9 samples"),
    ({"-iterations": "0"}, "positive integer"),
    ({"-bitwidth": "TO_INT4"}, "only TO_INT8"),
    ({"-bitwidth": None}, "missing required flag(s): -bitwidth"),
    ({"-per_channel": "True"}, "expected true or false"),
    ({"-fpfwd_outputs": "a,,b"}, "empty name"),
    ({"-fp32_diff": "-1"}, "fp32_diff"),
    ({"-th_methods": "KL"}, "unknown command line flag 'th_methods'"),
    ({"-weights": "um/other.fp32umodel"}, "does not exist"),
])
def test_calibration_rejects(ws, env, change, message):
    run(["pt_to_umodel", "-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "lmdb", "-n", "net"], env, ws)
    flags = {"-model": "um/net_bmnetp_test_fp32.prototxt", "-weights": "um/net_bmnetp.fp32umodel",
             "-iterations": "8", "-bitwidth": "TO_INT8"}
    flags.update(change)
    r = run(["calibration_use_pb", "quantize"] + [f"{k}={v}" for k, v in flags.items() if v is not None], env, ws)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (ws / "um/net_bmnetp.int8umodel").exists()


def test_calibration_checks_syntax_and_samples(ws, env):
    run(["pt_to_umodel", "-m", "net.pt", "-s", "(1,3,8,8)", "-d", "um", "-D", "lmdb", "-n", "net"], env, ws)
    good = ["-model=um/net_bmnetp_test_fp32.prototxt", "-weights=um/net_bmnetp.fp32umodel",
            "-iterations=2", "-bitwidth=TO_INT8"]
    r = run(["calibration_use_pb", *good], env, ws)
    assert r.returncode == 1 and "subcommand 'quantize'" in r.stderr
    r = run(["calibration_use_pb", "quantize", "--model=um/net_bmnetp_test_fp32.prototxt", *good[1:]], env, ws)
    assert r.returncode == 1 and "single dash" in r.stderr
    write_lmdb(ws / "lmdb", [[1, 3, 8, 9]] * 8)  # the prototxt points at it: wrong sample shape
    r = run(["calibration_use_pb", "quantize", *good], env, ws)
    assert r.returncode == 1 and "needs samples of shape [1, 3, 8, 8]" in r.stderr
    (ws / "lmdb/data.mdb").unlink()
    r = run(["calibration_use_pb", "quantize", *good], env, ws)
    assert r.returncode == 1 and "no data.mdb" in r.stderr
    write_lmdb(ws / "lmdb", [[1, 3, 8, 8]] * 2)
    env["NNTC_DOUBLE_CALI_MAX_DIFF"] = "0.01"
    r = run(["calibration_use_pb", "quantize", *good, "-fp32_diff=0.001"], env, ws)
    assert r.returncode == 1 and "max diff = 0.01 Fail" in r.stderr
    r = run(["calibration_use_pb", "quantize", *good, "-fp32_diff=0.02"], env, ws)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- bmnetu + tpu_model

def test_bmnetu_compiles_and_tpu_model_reports(ws, env):
    make_int8(ws, env, ["-th_method=MAX"])
    for n in (1, 4):
        r = run(["bmnetu", *INT8, f"-shapes=[{n},3,8,8]", f"-outdir=b{n}"], env, ws)
        assert r.returncode == 0, r.stderr
        assert r.stdout.rstrip().endswith(BANNER)
        assert {"compilation.bmodel", "input_ref_data.dat", "output_ref_data.dat", "io_info.dat"} <= \
            set(os.listdir(ws / f"b{n}"))
    assert read_bmodel(ws / "b4/compilation.bmodel")["nets"][0]["stages"][0]["source"]["calibration"][
        "th_method"] == "MAX"
    r = run(["tpu_model", "--combine", "b1/compilation.bmodel", "b4/compilation.bmodel", "-o", "all.bmodel"], env, ws)
    assert r.returncode == 0, r.stderr
    r = run(["tpu_model", "--info", "all.bmodel"], env, ws)
    assert r.returncode == 0, r.stderr
    head, nets = parse_info(r.stdout)
    assert head["bmodel version"] == "B.2.2" and head["chip"] == "BM1684" and head["create time"]
    assert [(n["name"], n["kind"]) for n in nets] == [("net", "static")]
    assert [[t[2] for t in st if t[0] == "input"] for st in nets[0]["stages"]] == [[[1, 3, 8, 8]], [[4, 3, 8, 8]]]
    assert nets[0]["stages"][0][0][3] == "int8" and nets[0]["stages"][1][1] == ("output", "output.1", [4, 1000],
                                                                               "int8", 0.0078125)


def test_bmnetu_fp32_info_and_input_as_fp32(ws, env):
    r = run(["bmnetp", "--model=net.pt", *GOOD_BMNETP, "--outdir=fp"], env, ws)
    r = run(["tpu_model", "--info", "fp/compilation.bmodel"], env, ws)
    _, nets = parse_info(r.stdout)
    assert nets[0]["stages"] == [[("input", "input.1", [1, 3, 8, 8], "float32", 1.0),
                                  ("output", "output.1", [1, 1000], "float32", 1.0)]]
    make_int8(ws, env)
    r = run(["bmnetu", *INT8, "-max_n=2", "-input_as_fp32=input.1", "-outdir=b2"], env, ws)
    assert r.returncode == 0, r.stderr
    st = read_bmodel(ws / "b2/compilation.bmodel")["nets"][0]["stages"][0]
    assert st["inputs"][0]["shape"] == [2, 3, 8, 8] and st["inputs"][0]["dtype"] == "float32"


@pytest.mark.parametrize("change, message", [
    ({"-prec": "FP16"}, "-prec='FP16'"),
    ({"-prec": None}, "-prec=FP32 (the default)"),
    ({"-weight": None}, "missing required flag(s): -weight"),
    ({"-weight": "um/nope.int8umodel"}, "does not exist"),
    ({"-weight": "um/net_bmnetp.fp32umodel"}, "do not belong together"),
    ({"-model": "um/net_bmnetp_deploy_fp32_unique_top.prototxt"}, "-prec=INT8 needs"),
    ({"-shapes": "[[1,3,8,8]]"}, "no outer brackets"),
    ({"-shapes": "[1,3,16,16]"}, "only the batch dimension"),
    ({"-shapes": "[1,3,8,8],[1,3]"}, "do not match"),
    ({"-dyn": "false"}, "expected True or False"),
    ({"-opt": "3"}, "invalid choice"),
    ({"-target": "BM1682"}, "BM1684 only"),
    ({"-input_as_fp32": "data"}, "not an input"),
    ({"-max_n": "2", "-shapes": "[1,3,8,8]"}, "contradicts"),
    ({"-foo": "1"}, "unknown command line flag 'foo'"),
])
def test_bmnetu_rejects(ws, env, change, message):
    make_int8(ws, env)
    flags = dict(a.split("=", 1) for a in INT8 + ["-outdir=o"])
    flags.update(change)
    r = run(["bmnetu"] + [f"{k}={v}" for k, v in flags.items() if v is not None], env, ws)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not (ws / "o").exists() and BANNER not in r.stdout


def test_bmnetu_python_api(ws, env):
    make_int8(ws, env)
    code = ("import bmnetu; print(bmnetu.__version__); bmnetu.compile("
            "model='um/net_bmnetp_deploy_int8_unique_top.prototxt', weight='um/net_bmnetp.int8umodel', "
            "outdir='api', prec='INT8', shapes=[[8,3,8,8]])")
    r = run([sys.executable, "-c", code], env, ws)
    assert r.returncode == 0, r.stderr
    net = read_bmodel(ws / "api/compilation.bmodel")["nets"][0]
    assert net["name"] == "net" and net["stages"][0]["source"]["opt"] == 2  # documented API default
    r = run([sys.executable, "-c", code.replace("prec='INT8', ", "")], env, ws)
    assert r.returncode != 0 and "-prec=FP32 (the default)" in r.stderr


def test_tpu_model_combine_rules(ws, env):
    def compile_(name, n, dyn="False"):
        r = run(["bmnetp", "--model=net.pt", f"--shapes=[[{n},3,8,8]]", f"--net_name={name}", "--target=BM1684",
                 f"--dyn={dyn}", f"--outdir={name}{n}{dyn}"], env, ws)
        assert r.returncode == 0, r.stderr
        return f"{name}{n}{dyn}/compilation.bmodel"

    a, b = compile_("a", 1), compile_("a", 2)
    for argv, message in [
        ([a, compile_("b", 2)], "different net names"),
        ([a, compile_("a", 2, "True")], "static and dynamic"),
        ([a, a], "already present"),
        ([a], "bad arguments"),
    ]:
        r = run(["tpu_model", "--combine", *argv, "-o", "x.bmodel"], env, ws)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert not (ws / "x.bmodel").exists()
    for argv in (["--info"], ["--info", "net.pt"], ["--help"], ["--combine", a, b]):
        assert run(["tpu_model", *argv], env, ws).returncode == 1


# ---------------------------------------------------------------- switches

def test_env_switches(ws, env):
    argv = ["bmnetp", "--model=net.pt", *GOOD_BMNETP]
    r = run(argv + ["--outdir=f"], dict(env, NNTC_DOUBLE_FAIL="bmnetu,bmnetp"), ws)
    assert r.returncode == 1 and "NNTC_DOUBLE_FAIL" in r.stderr and not (ws / "f").exists()
    r = run(argv + ["--outdir=nb"], dict(env, NNTC_DOUBLE_NO_BANNER="bmnetp"), ws)
    assert r.returncode == 0 and BANNER not in r.stdout and (ws / "nb/compilation.bmodel").is_file()
    r = run(argv + ["--outdir=no"], dict(env, NNTC_DOUBLE_NO_OUTPUT="bmnetp"), ws)
    assert r.returncode == 0 and BANNER in r.stdout and not (ws / "no/compilation.bmodel").exists()
    r = run(argv + ["--outdir=other"], dict(env, NNTC_DOUBLE_FAIL="bmnetu"), ws)
    assert r.returncode == 0
    r = run(argv + ["--outdir=typo"], dict(env, NNTC_DOUBLE_FAIL="bmnet"), ws)
    assert r.returncode == 1 and "unknown tool 'bmnet'" in r.stderr
    r = run(["tpu_model", "--info", "nb/compilation.bmodel"], dict(env, NNTC_DOUBLE_NO_OUTPUT="tpu_model"), ws)
    assert r.returncode == 0 and r.stdout == ""
    assert [e["tool"] for e in log(env)] == ["bmnetp"] * 5 + ["tpu_model"]
