"""ufw.tools.pt_to_umodel double: traced .pt -> <name>_bmnetp_test_fp32.prototxt + <name>_bmnetp.fp32umodel.

ufw.tools.on_to_umodel (ONNX) takes the same flags and writes <name>_bmneto_...: the stem names the
front end, as the vendor zoo's configs show ($(name)_bmneto_deploy_int8_unique_top.prototxt)."""
import os
import re

from . import files
from .common import DoubleError, check_name, execute

PROG = "python3 -m ufw.tools.pt_to_umodel"
USAGE = f"usage: {PROG} -m MODEL -s SHAPE -d OUTDIR -D LMDB_DIR [-n NAME] [--cmp]"
# converter -> (front end named in the file stems, model check, model suffix dropped from the default name)
CONVERTERS = {"pt_to_umodel": ("bmnetp", files.check_torchscript, ".pt"),
              "on_to_umodel": ("bmneto", files.check_onnx, ".onnx")}
VALUED = ("-m", "-s", "-d", "-D", "-n")
# The SDK docs make -d (default "compilation") and -D (random data) optional; the reference command
# line (sophgo-toolchains.md) always passes both, and a calibration without -D has no data, so the
# double requires them. -p/-a/--dyn/--desc exist in the vendor docs but are not used here: refused.
REQUIRED = ("-m", "-s", "-d", "-D")
FAKE_OUTPUT_DIMS = [1000]


def check(argv, tool="pt_to_umodel"):
    front, check_model, suffix = CONVERTERS[tool]
    prog = f"python3 -m ufw.tools.{tool}"

    def fail(msg):
        raise DoubleError(f"{USAGE.replace(PROG, prog)}\n{prog}: error: {msg}", 2)

    a, i = {}, 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--cmp":
            if "--cmp" in a:
                fail("argument --cmp: given more than once")
            a["--cmp"] = True
            i += 1
        elif tok in VALUED:
            # Strict: `-m <value>` as two tokens, as in the docs (argparse would also take -m=<v>, -m<v>).
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                fail(f"argument {tok}: expected one argument")
            if tok in a:
                fail(f"argument {tok}: given more than once")
            a[tok] = argv[i + 1]
            i += 2
        else:
            fail(f"unrecognized arguments: {' '.join(argv[i:])}")
    missing = [k for k in REQUIRED if k not in a]
    if missing:
        fail("the following arguments are required: " + ", ".join(missing))
    # Shape: "(N,C,H,W)" as documented. One input only: the one Data layer of the test prototxt
    # feeds one input, so multi-input calibration is outside what the double models. No spaces.
    m = re.fullmatch(r"\(([1-9][0-9]*(?:,[1-9][0-9]*)*)\)", a["-s"])
    if not m:
        fail(f"argument -s: {a['-s']!r} is not of the form (N,C,H,W) with positive integers, no spaces")
    check_model(a["-m"], f"{prog}: error", 1)
    lmdb = a["-D"]
    if not os.path.isfile(os.path.join(lmdb, "data.mdb")):
        raise DoubleError(f"{prog}: error: -D {lmdb!r} is not an LMDB folder (no data.mdb inside)", 1)
    # Default name, docs silent; seen in vendor scripts: "midas_s_192_256_jit.pt" gives
    # "midas_s_192_256_jit_bmnetp..." and "x.torchscript" gives "x.torchscript_bmnetp...":
    # the basename with a trailing ".pt" removed.
    name = a.get("-n")
    if name is None:
        name = os.path.basename(a["-m"])
        name = name[:-len(suffix)] if name.endswith(suffix) else name
    check_name(name, f"{prog}: error: -n", 1)
    return {"model": a["-m"], "shape": [int(d) for d in m.group(1).split(",")], "outdir": a["-d"],
            "lmdb": lmdb, "name": name, "cmp": a.get("--cmp", False), "tool": tool, "stem": f"{name}_{front}"}


def produce(o):
    os.makedirs(o["outdir"], exist_ok=True)
    shape, name, stem = o["shape"], o["name"], o["stem"]
    uid = files.new_uid()
    inputs = [{"name": "input.1", "shape": shape, "scale": 1}]
    outputs = [{"name": "output.1", "shape": [shape[0]] + FAKE_OUTPUT_DIMS, "scale": 1}]
    files.write_umodel(os.path.join(o["outdir"], f"{stem}.fp32umodel"), {
        "format": "nntc-double-umodel", "prec": "FP32", "net_name": name, "uid": uid,
        "inputs": inputs, "outputs": outputs, "coeff": os.path.getsize(o["model"]),
        "source": {"tool": o["tool"], "model": os.path.abspath(o["model"]),
                   "model_sha256": files.sha256(o["model"]), "cmp": o["cmp"]},
    })
    # The LMDB path is written as given, like a hand-written Caffe data layer: a relative path is
    # resolved against the working directory of calibration_use_pb, not against the prototxt.
    meta = {"kind": "test_fp32", "net_name": name, "umodel_uid": uid, "umodel": f"{stem}.fp32umodel"}
    files.write_prototxt(os.path.join(o["outdir"], f"{stem}_test_fp32.prototxt"), meta,
                         [files.data_layer("input.1", o["lmdb"], shape[0]), files.body_layer(inputs, outputs)])
    print(f"{o['tool']} (NNTC test double): wrote {stem}.fp32umodel and "
          f"{stem}_test_fp32.prototxt in {o['outdir']}", flush=True)


def main(argv, api=False, tool="pt_to_umodel"):
    """No success banner is documented for pt_to_umodel: none is printed."""
    return execute(tool, argv, lambda: check(argv, tool), produce,
                   api=f"ufw.tools.{tool}" if api else None, kwargs=None)
