"""bmnetu double: `bmnetu -model=... -weight=... -prec=INT8 ...` and `bmnetu.compile(...)` (bmnetu.md)."""
import os
import re

from . import files
from .common import DoubleError, check_name, execute, parse_bool, parse_choice_int, parse_gflags, parse_shapes_flat

PROG = "bmnetu"
# bmnetu.md's table, plus -target/-max_n/-input_as_fp32 from the reference command line and
# -enable_profile, which the vendor's own zoo (tpu-perf bmnetu_options) passes to bmnetu.
KNOWN = ("model", "weight", "shapes", "net_name", "opt", "dyn", "prec", "outdir", "cmp", "mode", "use_wino",
         "target", "max_n", "input_as_fp32", "enable_profile")
# model/weight/outdir are "Necessary" in bmnetu.md. -target is not in the table; the reference command
# line always passes it and its default is undocumented, so the double requires it.
REQUIRED = ("model", "weight", "outdir", "target")
TARGETS = ("BM1684",)  # bmnetu.md: "BMNETU是针对BM1684的UFW模型编译器"
PRECS = ("FP32", "INT8")  # bmnetu.md: "prec ... Option: FP32, INT8. default FP32"


def _err(msg):
    return DoubleError(f"{PROG}: ERROR: {msg}", 1)


def check_cli(argv):
    _, a = parse_gflags(PROG, argv, KNOWN)
    missing = [f"-{k}" for k in REQUIRED if k not in a]
    if missing:
        raise _err("missing required flag(s): " + ", ".join(missing))

    def boolean(key, default):
        return parse_bool(a[key], ("True", "False"), f"{PROG}: ERROR: -{key}", 1) if key in a else default

    mode = a.get("mode", "compile")
    if mode == "GenUmodel":  # documented, but what it writes is not: refused rather than invented
        raise _err("-mode=GenUmodel is not modelled by the NNTC test double")
    if mode != "compile":
        raise _err(f"-mode={mode!r}: choose from compile, GenUmodel")
    if a["target"] not in TARGETS:
        raise _err(f"-target={a['target']!r}: bmnetu compiles for {', '.join(TARGETS)} only")
    max_n = None
    if "max_n" in a:
        if not re.fullmatch(r"[1-9][0-9]*", a["max_n"]):
            raise _err(f"illegal value '{a['max_n']}' for flag 'max_n' (a positive integer)")
        max_n = int(a["max_n"])
    o = {
        "model": a["model"], "weight": a["weight"], "outdir": a["outdir"], "target": a["target"],
        "prec": a.get("prec", "FP32"),  # default FP32, as documented: with an .int8umodel that is refused below
        "shapes": parse_shapes_flat(a["shapes"], PROG) if "shapes" in a else None,
        "net_name": a.get("net_name"),
        "opt": parse_choice_int(a.get("opt", "1"), (0, 1, 2), f"{PROG}: ERROR: -opt", 1),  # CLI default 1
        "dyn": boolean("dyn", False), "cmp": boolean("cmp", True), "use_wino": boolean("use_wino", None),
        "enable_profile": boolean("enable_profile", False),
        "max_n": max_n,
        "input_as_fp32": a["input_as_fp32"].split(",") if "input_as_fp32" in a else None,
    }
    return validate(o)


def check_api(kw):
    """bmnetu.compile(): str paths, shapes a list of int lists, bools; target is not part of the API."""
    for key in ("model", "weight", "outdir", "prec"):
        if not isinstance(kw[key], str):
            raise DoubleError(f"bmnetu.compile: {key} must be a str, got {type(kw[key]).__name__}")
    sh = kw["shapes"]
    if sh is not None and not (isinstance(sh, list) and sh and all(
            isinstance(s, list) and s and all(type(d) is int and d > 0 for d in s) for s in sh)):
        raise DoubleError(f"bmnetu.compile: shapes must be a list of lists of positive ints, got {sh!r}")
    if type(kw["opt"]) is not int or kw["opt"] not in (0, 1, 2):
        raise DoubleError(f"bmnetu.compile: opt must be 0, 1 or 2, got {kw['opt']!r}")
    for key in ("dyn", "cmp"):
        if not isinstance(kw[key], bool):
            raise DoubleError(f"bmnetu.compile: {key} must be a bool, got {kw[key]!r}")
    return validate(dict(kw, target="BM1684", use_wino=None, max_n=None, input_as_fp32=None))


def validate(o):
    if o["prec"] not in PRECS:
        raise _err(f"-prec={o['prec']!r}: choose from {', '.join(PRECS)}")
    meta, _ = files.read_prototxt(o["model"], PROG)
    um = files.read_umodel(o["weight"], PROG)
    if meta.get("umodel_uid") != um.get("uid"):
        raise _err(f"-model={o['model']!r} and -weight={o['weight']!r} do not belong together")
    # The precision must match the prototxt: INT8 = *_deploy_int8_unique_top.prototxt (+ its
    # .int8umodel); FP32 = *_deploy_fp32_unique_top.prototxt or *_test_fp32.prototxt. FP32 with the
    # int8 deploy prototxt (the documented FP32 default applied to int8 files) is refused.
    if o["prec"] == "INT8" and meta.get("kind") != "deploy_int8":
        raise _err("-prec=INT8 needs the *_deploy_int8_unique_top.prototxt and the .int8umodel")
    if o["prec"] == "FP32" and meta.get("kind") == "deploy_int8":
        raise _err("-prec=FP32 (the default) given with the int8 deploy prototxt: pass -prec=INT8")
    ins = um["inputs"]
    shapes = o["shapes"] or [list(t["shape"]) for t in ins]
    if o["max_n"] is not None:
        if o["shapes"] and any(s[0] != o["max_n"] for s in shapes):
            raise _err(f"-max_n={o['max_n']} contradicts -shapes")
        shapes = [[o["max_n"]] + s[1:] for s in shapes]
    # Docs silent on changing more than the batch: the double allows only N to differ from the umodel.
    if len(shapes) != len(ins) or any(s[1:] != t["shape"][1:] or len(s) != len(t["shape"])
                                      for s, t in zip(shapes, ins)):
        raise _err(f"-shapes {shapes} do not match the model inputs "
                   f"{[t['shape'] for t in ins]} (only the batch dimension may change)")
    if len({s[0] for s in shapes}) != 1:
        raise _err(f"-shapes {shapes}: all inputs must have the same batch size")
    names = [t["name"] for t in ins]
    for n in o["input_as_fp32"] or []:
        if o["prec"] != "INT8" or n not in names:
            raise _err(f"-input_as_fp32={n!r}: not an input of this INT8 model (inputs: {', '.join(names)})")
    o["net_name"] = check_name(o["net_name"] or meta["net_name"], f"{PROG}: ERROR: -net_name", 1)
    if not o["outdir"]:
        raise _err("-outdir is empty")
    return dict(o, umodel=um, shapes=shapes)


def produce(o):
    um, batch = o["umodel"], o["shapes"][0][0]
    print(f"BMNETU (NNTC test double): compiling {o['weight']} as {o['net_name']} ({o['prec']})", flush=True)

    def tensor(t, shape, as_fp32=False):
        if o["prec"] == "INT8" and not as_fp32:
            return {"name": t["name"], "shape": shape, "dtype": "int8", "scale": t["scale"]}
        return {"name": t["name"], "shape": shape, "dtype": "float32", "scale": 1}

    stage = {
        "inputs": [tensor(t, s, t["name"] in (o["input_as_fp32"] or [])) for t, s in zip(um["inputs"], o["shapes"])],
        "outputs": [tensor(t, [batch] + t["shape"][1:]) for t in um["outputs"]],
    }
    source = {"tool": "bmnetu", "model": os.path.abspath(o["model"]), "weight": os.path.abspath(o["weight"]),
              "weight_sha256": files.sha256(o["weight"]), "prec": o["prec"], "opt": o["opt"], "cmp": o["cmp"],
              "use_wino": o["use_wino"], "enable_profile": o.get("enable_profile", False),
              "calibration": um.get("calibration")}
    bm = files.new_bmodel(o["target"], o["net_name"], o["dyn"], o["prec"], stage, um["coeff"], source)
    files.write_compile_outputs(o["outdir"], bm, o["cmp"])


def cli_main(argv):
    return execute(PROG, argv, lambda: check_cli(argv), produce, banner=True)


def api_compile(kw):
    execute(PROG, None, lambda: check_api(kw), produce, banner=True, raise_errors=True,
            api="bmnetu.compile", kwargs=kw)
