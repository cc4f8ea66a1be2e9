"""bmnetp double: `python3 -m bmnetp --key=value ...` and `bmnetp.compile(...)` (bmnetp.md).

bmneto (ONNX) is the same front end with the same documented flags (fp32-bmodel.md lists both);
its model must be an ONNX file instead of a TorchScript archive."""
import os

from . import files
from .common import (DoubleError, check_name, execute, parse_bool, parse_choice_int, parse_dashdash,
                     parse_shapes_nested)

PROG = "python3 -m bmnetp"
MODEL_CHECKS = {"bmnetp": files.check_torchscript, "bmneto": files.check_onnx}
TARGETS = ("BM1682", "BM1684")  # bmnetp.md: "target ... Option: BM1682, BM1684" (no BM1684X in NNTC 3.x docs)
KNOWN = ("model", "shapes", "net_name", "opt", "dyn", "outdir", "target", "cmp", "mode", "enable_profile", "list_ops")
# bmnetp.md marks model, shapes, net_name, outdir and target "Necessary". target also has a default
# (BM1682) there, which contradicts "Necessary": the double requires it ("always pass it").
REQUIRED = ("model", "shapes", "net_name", "outdir", "target")
OPS = ("aten::_convolution", "aten::add", "aten::adaptive_avg_pool2d", "aten::batch_norm", "aten::cat",
       "aten::flatten", "aten::linear", "aten::max_pool2d", "aten::relu", "aten::sigmoid", "aten::upsample_nearest2d")
FAKE_OUTPUT_DIMS = [1000]  # the double runs nothing: every net gets one output [N, 1000]


def _semantic_checks(o, tool="bmnetp"):
    MODEL_CHECKS[tool](o["model"], f"{tool}: error", 1)
    check_name(o["net_name"], f"{tool}: error", 1)
    if not o["outdir"]:
        raise DoubleError(f"{tool}: error: outdir is empty", 1)
    return dict(o, tool=tool)


def check_cli(argv, tool="bmnetp"):
    prog = f"python3 -m {tool}"
    a = parse_dashdash(prog, argv, KNOWN, no_value=("list_ops",), required=REQUIRED)
    if a.get("list_ops"):
        return {"list_ops": True}

    def err(key, msg=None):
        return f"{prog}: error: argument --{key}" + (f": {msg}" if msg else "")

    bools = {}
    for key, default in (("dyn", False), ("cmp", True), ("enable_profile", False)):
        bools[key] = parse_bool(a[key], ("True", "False"), err(key), 2) if key in a else default
    if a["target"] not in TARGETS:
        raise DoubleError(err("target", f"invalid choice: {a['target']!r} (choose from {', '.join(TARGETS)})"), 2)
    mode = a.get("mode", "compile")
    if mode == "GenUmodel":
        # Documented value, but the docs do not say what it writes; bmbuild makes umodels with
        # ufw.tools.pt_to_umodel. Refused rather than inventing outputs.
        raise DoubleError(f"{prog}: error: --mode=GenUmodel is not modelled by the NNTC test double", 1)
    if mode != "compile":
        raise DoubleError(err("mode", f"invalid choice: {mode!r} (choose from compile, GenUmodel)"), 2)
    return _semantic_checks({
        "model": a["model"], "outdir": a["outdir"], "target": a["target"], "net_name": a["net_name"],
        "shapes": parse_shapes_nested(a["shapes"], err("shapes")),
        "opt": parse_choice_int(a.get("opt", "1"), (0, 1, 2), err("opt"), 2),
        **bools,
    }, tool)


def check_api(kw):
    """bmnetp.compile(): Python types exactly as in bmnetp.md (str paths, list of int lists, bools)."""
    for key in ("model", "outdir", "target", "net_name"):
        if not isinstance(kw[key], str):
            raise DoubleError(f"bmnetp.compile: {key} must be a str, got {type(kw[key]).__name__}")
    sh = kw["shapes"]
    if not (isinstance(sh, list) and sh and all(
            isinstance(s, list) and s and all(type(d) is int and d > 0 for d in s) for s in sh)):
        raise DoubleError(f"bmnetp.compile: shapes must be a list of lists of positive ints, got {sh!r}")
    if type(kw["opt"]) is not int or kw["opt"] not in (0, 1, 2):
        raise DoubleError(f"bmnetp.compile: opt must be 0, 1 or 2, got {kw['opt']!r}")
    for key in ("dyn", "cmp", "enable_profile"):
        if not isinstance(kw[key], bool):
            raise DoubleError(f"bmnetp.compile: {key} must be a bool, got {kw[key]!r}")
    if kw["target"] not in TARGETS:
        raise DoubleError(f"bmnetp.compile: target must be one of {', '.join(TARGETS)}, got {kw['target']!r}")
    return _semantic_checks(dict(kw))


def produce(o):
    if o.get("list_ops"):
        print("\n".join(OPS))
        return
    tool = o.get("tool", "bmnetp")
    print(f"{tool.upper()} (NNTC test double): compiling {o['model']} as {o['net_name']} for {o['target']}", flush=True)
    shapes = o["shapes"]
    stage = {
        "inputs": [{"name": f"input.{i + 1}", "shape": s, "dtype": "float32", "scale": 1}
                   for i, s in enumerate(shapes)],
        "outputs": [{"name": "output.1", "shape": [shapes[0][0]] + FAKE_OUTPUT_DIMS, "dtype": "float32", "scale": 1}],
    }
    source = {"tool": tool, "model": os.path.abspath(o["model"]), "model_sha256": files.sha256(o["model"]),
              "opt": o["opt"], "cmp": o["cmp"], "enable_profile": o["enable_profile"]}
    bm = files.new_bmodel(o["target"], o["net_name"], o["dyn"], "FP32", stage,
                          os.path.getsize(o["model"]), source)
    files.write_compile_outputs(o["outdir"], bm, o["cmp"])


def cli_main(argv, tool="bmnetp"):
    return execute(tool, argv, lambda: check_cli(argv, tool), produce, banner="--list_ops" not in argv)


def api_compile(kw):
    execute("bmnetp", None, lambda: check_api(kw), produce, banner=True, raise_errors=True,
            api="bmnetp.compile", kwargs=kw)
