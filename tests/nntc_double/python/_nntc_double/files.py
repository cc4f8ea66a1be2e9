"""The files the double writes and reads: bmodel, umodel, prototxt, LMDB, TorchScript check.

All formats are the double's own (documented in README.md); none is the vendor's real format.
"""
import hashlib
import json
import os
import re
import struct
import time
import uuid
import zipfile

from . import VERSION
from .common import DoubleError

BMODEL_MAGIC = b"NNTC-DOUBLE-BMODEL\x00"   # then <I format version> <Q json length> <json utf-8>
UMODEL_MAGIC = b"NNTC-DOUBLE-UMODEL\n"     # then json utf-8
LMDB_MAGIC = b"NNTC-DOUBLE-LMDB 1\n"       # then records: one JSON header line + nbytes raw bytes
META_PREFIX = "# nntc-double-meta: "       # first-lines JSON comment of every prototxt
LMDB_DTYPES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "float32": 4}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prod(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def check_torchscript(path, what, code):
    """bmnetp takes only torch.jit.trace output (bmnetp.md), saved by torch.jit.save: a zip archive
    with `<archive>/data.pkl` and `<archive>/code/...` entries. The double requires the zip and one of them."""
    if not os.path.isfile(path):
        raise DoubleError(f"{what}: model file {path!r} does not exist", code)
    if not zipfile.is_zipfile(path):
        raise DoubleError(f"{what}: {path!r} is not a TorchScript archive (not a zip file); "
                          "bmnetp only accepts torch.jit.trace(...).save() output", code)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not any(re.fullmatch(r"[^/]+/(data\.pkl|code/.*)", n) for n in names):
        raise DoubleError(f"{what}: {path!r} is a zip file but not a TorchScript archive "
                          "(no <name>/data.pkl or <name>/code/ entry)", code)


def check_onnx(path, what, code):
    """bmneto takes an ONNX file: a serialized ModelProto, whose first field is ir_version (field 1,
    varint: byte 0x08). The double requires that byte (the real tool parses the whole protobuf)."""
    if not os.path.isfile(path):
        raise DoubleError(f"{what}: model file {path!r} does not exist", code)
    with open(path, "rb") as f:
        head = f.read(1)
    if head != b"\x08":
        raise DoubleError(f"{what}: {path!r} is not an ONNX model (no ModelProto ir_version field first)", code)


# ---------------------------------------------------------------- bmodel

def write_bmodel(path, doc):
    blob = json.dumps(doc, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(BMODEL_MAGIC + struct.pack("<IQ", 1, len(blob)) + blob)


def read_bmodel(path, what="tpu_model"):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DoubleError(f"{what}: ERROR: cannot open bmodel {path!r}: {e.strerror}", 1)
    n = len(BMODEL_MAGIC)
    if not data.startswith(BMODEL_MAGIC) or len(data) < n + 12:
        raise DoubleError(f"{what}: ERROR: {path!r} is not a bmodel (written by the NNTC test double)", 1)
    _, size = struct.unpack("<IQ", data[n:n + 12])
    blob = data[n + 12:]
    if len(blob) != size:
        raise DoubleError(f"{what}: ERROR: {path!r} is a truncated bmodel", 1)
    return json.loads(blob)


def new_bmodel(chip, net_name, dynamic, prec, stage, coeff, source):
    """One net, one stage. Memory figures are invented but consistent (coeff from the weight file size)."""
    runtime = sum(prod(t["shape"]) * (1 if t["dtype"] == "int8" else 4)
                  for t in stage["inputs"] + stage["outputs"])
    return {
        "format": "nntc-double-bmodel", "bmodel_version": "B.2.2", "chip": chip,
        "create_time": time.ctime(), "toolchain_version": VERSION,
        "device_mem": {"coeff": coeff, "instruct": 4096, "runtime": runtime},
        "host_mem": {"coeff": 0, "runtime": 0},
        "nets": [{"name": net_name, "dynamic": dynamic, "prec": prec,
                  "stages": [dict(stage, source=source)]}],
    }


def write_compile_outputs(outdir, bmodel, cmp):
    """compilation.bmodel, plus input_ref_data.dat, output_ref_data.dat and io_info.dat.
    The docs tie the ref data to the comparison (bmrt_test's compare); they are silent on cmp=False,
    and the double then writes only compilation.bmodel, so nobody relies on ref data without cmp."""
    os.makedirs(outdir, exist_ok=True)
    write_bmodel(os.path.join(outdir, "compilation.bmodel"), bmodel)
    if not cmp:
        return
    stage = bmodel["nets"][0]["stages"][0]
    for kind in ("inputs", "outputs"):
        size = sum(prod(t["shape"]) * (1 if t["dtype"] == "int8" else 4) for t in stage[kind])
        with open(os.path.join(outdir, f"{kind[:-1]}_ref_data.dat"), "wb") as f:
            f.write(bytes(size))  # zeros of the right size: the double computes nothing
    with open(os.path.join(outdir, "io_info.dat"), "w") as f:
        for kind in ("inputs", "outputs"):
            for t in stage[kind]:
                f.write(f"{kind[:-1]} {t['name']} {t['dtype']} {' '.join(map(str, t['shape']))}\n")


# ---------------------------------------------------------------- umodel / prototxt

def new_uid():
    return uuid.uuid4().hex


def write_umodel(path, doc):
    with open(path, "wb") as f:
        f.write(UMODEL_MAGIC + json.dumps(doc, sort_keys=True, indent=1).encode())


def read_umodel(path, what, code=1):
    if not os.path.isfile(path):
        raise DoubleError(f"{what}: ERROR: weight file {path!r} does not exist", code)
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(UMODEL_MAGIC):
        raise DoubleError(f"{what}: ERROR: {path!r} is not a umodel (written by the NNTC test double)", code)
    return json.loads(data[len(UMODEL_MAGIC):])


def write_prototxt(path, meta, layers):
    """A Caffe-style text prototxt; line 2 holds META_PREFIX + JSON (kind, net name, umodel uid, ...)."""
    with open(path, "w") as f:
        f.write(f"# Written by the NNTC test double ({VERSION}); not a real UFW prototxt.\n")
        f.write(META_PREFIX + json.dumps(meta, sort_keys=True) + "\n")
        f.write(f'name: "{meta["net_name"]}"\n')
        for layer in layers:
            f.write(layer)


def read_prototxt(path, what, code=1):
    """Returns (meta, text)."""
    if not os.path.isfile(path):
        raise DoubleError(f"{what}: ERROR: model file {path!r} does not exist", code)
    with open(path) as f:
        text = f.read()
    for line in text.splitlines()[:5]:
        if line.startswith(META_PREFIX):
            return json.loads(line[len(META_PREFIX):]), text
    raise DoubleError(f"{what}: ERROR: {path!r} is not a prototxt written by the NNTC test double", code)


def input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{\n  name: "{name}"\n  type: "Input"\n  top: "{name}"\n'
            f"  input_param {{\n    shape {{ {dims} }}\n  }}\n}}\n")


def data_layer(name, source, batch_size):
    return (f'layer {{\n  name: "{name}"\n  type: "Data"\n  top: "{name}"\n'
            f"  include {{\n    phase: TEST\n  }}\n"
            f'  data_param {{\n    source: "{source}"\n    batch_size: {batch_size}\n    backend: LMDB\n  }}\n}}\n')


def body_layer(inputs, outputs):
    bottoms = "".join(f'  bottom: "{i["name"]}"\n' for i in inputs)
    tops = "".join(f'  top: "{o["name"]}"\n' for o in outputs)
    return f'layer {{\n  name: "net"\n  type: "NNTCDoubleNet"\n{bottoms}{tops}}}\n'


# ---------------------------------------------------------------- LMDB (double format, see README)

def lmdb_record_header(key, dtype, shape, label):
    nbytes = prod(shape) * LMDB_DTYPES[dtype]
    rec = {"key": key, "dtype": dtype, "shape": list(shape), "label": label, "nbytes": nbytes}
    return (json.dumps(rec, sort_keys=True) + "\n").encode()


def read_lmdb_headers(folder, what, code=1, with_payload=False):
    """Yield the record headers (dicts) of <folder>/data.mdb; with_payload adds 'payload' bytes."""
    path = os.path.join(folder, "data.mdb")
    if not os.path.isfile(path):
        raise DoubleError(f"{what}: ERROR: LMDB folder {folder!r} has no data.mdb", code)
    with open(path, "rb") as f:
        if f.readline() != LMDB_MAGIC:
            raise DoubleError(f"{what}: ERROR: {path!r} is not an LMDB written by ufwio (NNTC test double)", code)
        while True:
            line = f.readline()
            if not line:
                return
            try:
                rec = json.loads(line)
                payload = f.read(rec["nbytes"])
            except (ValueError, KeyError):
                raise DoubleError(f"{what}: ERROR: {path!r} is corrupt", code)
            if len(payload) != rec["nbytes"]:
                raise DoubleError(f"{what}: ERROR: {path!r} is truncated (was LMDB_Dataset.close() called?)", code)
            if with_payload:
                rec["payload"] = payload
            yield rec
