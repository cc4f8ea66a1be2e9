"""calibration_use_pb double: `calibration_use_pb quantize -model=... -weights=... -iterations=N -bitwidth=TO_INT8 ...`."""
import os
import re

from . import files
from .common import DoubleError, execute, parse_bool, parse_gflags

PROG = "calibration_use_pb"
KNOWN = ("model", "weights", "iterations", "bitwidth", "th_method", "per_channel", "fpfwd_outputs",
         "fp32_diff", "save_test_proto")
# Always present in the reference command line (sophgo-toolchains.md), so required by the double.
REQUIRED = ("model", "weights", "iterations", "bitwidth")
TH_METHODS = ("KL", "SYMKL", "JSD", "ADMM", "ACIQ", "MAX", "PERCENTILE9999", "MSE")
FAKE_INT8_SCALE = 0.0078125


def _err(msg):
    return DoubleError(f"{PROG}: ERROR: {msg}", 1)


def check(argv):
    pos, a = parse_gflags(PROG, argv, KNOWN, positional=1)
    if pos != ["quantize"]:
        raise _err("the first argument must be the subcommand 'quantize' "
                   f"(usage: {PROG} quantize -model=... -weights=... -iterations=N -bitwidth=TO_INT8)")
    missing = [f"-{k}" for k in REQUIRED if k not in a]
    if missing:
        raise _err("missing required flag(s): " + ", ".join(missing))
    if not re.fullmatch(r"[1-9][0-9]*", a["iterations"]):
        raise _err(f"illegal value '{a['iterations']}' for flag 'iterations' (a positive integer)")
    if a["bitwidth"] != "TO_INT8":
        raise _err(f"-bitwidth={a['bitwidth']!r}: only TO_INT8 is supported")
    th = a.get("th_method")
    if th is not None and th not in TH_METHODS:
        raise _err(f"-th_method={th!r}: choose from {', '.join(TH_METHODS)}")
    flags = {k: parse_bool(a[k], ("true", "false"), f"{PROG}: ERROR: -{k}", 1) if k in a else None
             for k in ("per_channel", "save_test_proto")}
    fpfwd = None
    if "fpfwd_outputs" in a:
        # Layer names may contain spaces and '<>' (vendor scripts: "< 12 >17,< 12 >23"); the double
        # cannot check them against the real graph, only that the list is well formed.
        fpfwd = a["fpfwd_outputs"].split(",")
        if any(not n or n != n.strip() for n in fpfwd):
            raise _err(f"-fpfwd_outputs={a['fpfwd_outputs']!r}: empty name or stray spaces in the list")
    diff = None
    if "fp32_diff" in a:
        try:
            diff = float(a["fp32_diff"])
        except ValueError:
            diff = -1.0
        if not diff > 0:
            raise _err(f"illegal value '{a['fp32_diff']}' for flag 'fp32_diff' (a positive number)")

    meta, text = files.read_prototxt(a["model"], PROG)
    if meta.get("kind") != "test_fp32":
        raise _err(f"-model={a['model']!r} is not an fp32 test prototxt (*_test_fp32.prototxt)")
    if not a["weights"].endswith(".fp32umodel"):
        raise _err(f"-weights={a['weights']!r} is not a .fp32umodel")
    um = files.read_umodel(a["weights"], PROG)
    if um.get("prec") != "FP32" or um.get("uid") != meta.get("umodel_uid"):
        raise _err(f"-model and -weights do not belong together ({a['model']} was written with another umodel)")

    # The prototxt's Data layer: source (resolved against our cwd, as Caffe does) and batch_size.
    src = re.search(r'data_param\s*\{[^}]*?source:\s*"([^"]*)"', text)
    bs = re.search(r"data_param\s*\{[^}]*?batch_size:\s*([0-9]+)", text)
    if not src or not bs:
        raise _err(f"{a['model']}: no Data layer with data_param {{ source: ... batch_size: ... }}")
    lmdb, batch = src.group(1), int(bs.group(1))
    shape = um["inputs"][0]["shape"]
    if batch != shape[0]:
        raise _err(f"{a['model']}: data_param batch_size {batch} differs from the input batch {shape[0]}")
    # Each ufwio record is one sample [1,C,H,W] (SDK examples put arrays of shape [1,C,H,W]);
    # an iteration reads batch_size records.
    want = [1] + shape[1:]
    count = 0
    for rec in files.read_lmdb_headers(lmdb, PROG):
        if rec["shape"] != want:
            raise _err(f"LMDB {lmdb!r} record {rec['key']!r} has shape {rec['shape']}, the network "
                       f"input {um['inputs'][0]['name']} needs samples of shape {want}")
        count += 1
    iters = int(a["iterations"])
    # Docs silent on iterations beyond the data: a Caffe data layer would wrap around and reuse
    # samples. The double refuses, so bmbuild must size -iterations to the samples it wrote.
    if iters * batch > count:
        raise _err(f"-iterations={iters} needs {iters * batch} samples, LMDB {lmdb!r} holds {count}")

    max_diff = os.environ.get("NNTC_DOUBLE_CALI_MAX_DIFF")
    if max_diff is not None:
        try:
            max_diff = float(max_diff)
        except ValueError:
            raise DoubleError(f"nntc-double: NNTC_DOUBLE_CALI_MAX_DIFF={max_diff!r} is not a number", 1)
    if max_diff is not None and (diff is None or diff < max_diff):
        # The typical real failure (sophgo-toolchains.md): fp32 comparison abort, fixed by raising -fp32_diff.
        raise DoubleError(f"{PROG}: max diff = {max_diff:g} Fail", 1)
    return {"model": a["model"], "weights": a["weights"], "umodel": um, "iterations": iters,
            "bitwidth": a["bitwidth"], "th_method": th, "fpfwd_outputs": fpfwd, "fp32_diff": diff,
            "lmdb": lmdb, "samples": count, **flags}


def produce(o):
    stem = o["weights"][:-len(".fp32umodel")]
    um = dict(o["umodel"])
    uid = files.new_uid()
    cal = {k: o[k] for k in ("th_method", "fpfwd_outputs", "per_channel", "iterations", "bitwidth",
                             "fp32_diff", "save_test_proto", "lmdb", "samples")}
    cal["fp32umodel_uid"] = um["uid"]
    um.update(prec="INT8", uid=uid, calibration=cal,
              inputs=[dict(t, scale=FAKE_INT8_SCALE) for t in um["inputs"]],
              outputs=[dict(t, scale=FAKE_INT8_SCALE) for t in um["outputs"]])
    files.write_umodel(stem + ".int8umodel", um)
    base = os.path.basename(stem)
    for prec in ("int8", "fp32"):
        meta = {"kind": f"deploy_{prec}", "net_name": um["net_name"], "umodel_uid": uid,
                "umodel": base + ".int8umodel", "th_method": o["th_method"],
                "fpfwd_outputs": o["fpfwd_outputs"], "per_channel": o["per_channel"]}
        layers = [files.input_layer(t["name"], t["shape"]) for t in um["inputs"]]
        files.write_prototxt(f"{stem}_deploy_{prec}_unique_top.prototxt", meta,
                             layers + [files.body_layer(um["inputs"], um["outputs"])])
    # -save_test_proto=true: the docs do not name the extra test prototxts; the double records the
    # flag but writes only the three documented files.
    print(f"{PROG} (NNTC test double): calibrated {o['iterations']} iterations, wrote {base}.int8umodel, "
          f"{base}_deploy_int8_unique_top.prototxt, {base}_deploy_fp32_unique_top.prototxt", flush=True)


def main(argv):
    """No success banner is documented for calibration_use_pb: none is printed."""
    return execute(PROG, argv, lambda: check(argv), produce)
