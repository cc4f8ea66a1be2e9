"""tpu_model double: `tpu_model --info <bmodel>` and `tpu_model --combine a.bmodel b.bmodel ... -o out.bmodel`."""
import time

from . import files
from .common import DoubleError, execute

PROG = "tpu_model"
USAGE = ("usage: tpu_model --info <bmodel>\n"
         "       tpu_model --combine <a.bmodel> <b.bmodel> [...] -o <out.bmodel>")


def check(argv):
    if len(argv) == 2 and argv[0] == "--info":
        return {"info": files.read_bmodel(argv[1], PROG)}
    if len(argv) >= 5 and argv[0] == "--combine" and argv[-2] == "-o":
        ins, out = argv[1:-2], argv[-1]
        # "merges batch sizes of one net" (sophgo-toolchains.md): the double wants at least two files.
        if any(p.startswith("-") for p in ins) or out in ins:
            raise DoubleError(f"{PROG}: ERROR: bad --combine arguments\n{USAGE}", 1)
        return {"combine": combine([files.read_bmodel(p, PROG) for p in ins], ins), "out": out}
    raise DoubleError(f"{PROG}: ERROR: bad arguments {' '.join(argv)!r}\n{USAGE}", 1)


def combine(docs, paths):
    """One net in every file, same chip/name/precision, all static or all dynamic (static and dynamic
    cannot be mixed, sophgo-toolchains.md), no two stages with the same input shapes. The real tool
    also builds multi-net bmodels from different nets; bmbuild only merges batch sizes, so the double
    refuses different net names. Mixing FP32 and INT8 of one net is refused too (docs silent)."""
    first = docs[0]
    stages, seen = [], set()
    for doc, path in zip(docs, paths):
        if len(doc["nets"]) != 1:
            raise DoubleError(f"{PROG}: ERROR: {path} holds {len(doc['nets'])} nets; combine one net", 1)
        net, net0 = doc["nets"][0], first["nets"][0]
        for key, what in (("name", "net names"), ("dynamic", "static and dynamic nets"), ("prec", "precisions")):
            if net[key] != net0[key]:
                raise DoubleError(f"{PROG}: ERROR: cannot combine different {what}: "
                                  f"{paths[0]} has {net0[key]!r}, {path} has {net[key]!r}", 1)
        if doc["chip"] != first["chip"]:
            raise DoubleError(f"{PROG}: ERROR: cannot combine chips {first['chip']} and {doc['chip']}", 1)
        for st in net["stages"]:
            sig = [(t["name"], t["dtype"]) for t in st["inputs"] + st["outputs"]]
            sig0 = [(t["name"], t["dtype"]) for t in net0["stages"][0]["inputs"] + net0["stages"][0]["outputs"]]
            if sig != sig0:  # docs silent; one net's stages share tensor names and types
                raise DoubleError(f"{PROG}: ERROR: {path}: stage tensors {sig} differ from {sig0}", 1)
            key = tuple(tuple(t["shape"]) for t in st["inputs"])
            if key in seen:
                raise DoubleError(f"{PROG}: ERROR: {path}: a stage with input shapes {list(key)} is already present", 1)
            seen.add(key)
            stages.append(st)
    mems = [d["device_mem"] for d in docs]
    return dict(first, create_time=time.ctime(),
                device_mem={"coeff": max(m["coeff"] for m in mems), "instruct": sum(m["instruct"] for m in mems),
                            "runtime": max(m["runtime"] for m in mems)},
                nets=[dict(first["nets"][0], stages=stages)])


def info_text(doc):
    """The `tpu_model --info` layout (sophgo-toolchains.md lists the fields)."""
    lines = [f"bmodel version: {doc['bmodel_version']}", f"chip: {doc['chip']}",
             f"create time: {doc['create_time']}", ""]
    for i, net in enumerate(doc["nets"]):
        lines += ["==========================================",
                  f"net {i}: [{net['name']}]  {'dynamic' if net['dynamic'] else 'static'}"]
        for j, st in enumerate(net["stages"]):
            lines += ["------------", f"stage {j}:"]
            for kind in ("input", "output"):
                for t in st[kind + "s"]:
                    lines.append(f"{kind}: {t['name']}, [{', '.join(map(str, t['shape']))}], "
                                 f"{t['dtype']}, scale: {t['scale']:g}")
    d, h = doc["device_mem"], doc["host_mem"]
    lines += ["", f"device mem size: {d['coeff'] + d['instruct'] + d['runtime']} "
                  f"(coeff: {d['coeff']}, instruct: {d['instruct']}, runtime: {d['runtime']})",
              f"host mem size: {h['coeff'] + h['runtime']} (coeff: {h['coeff']}, runtime: {h['runtime']})"]
    return "\n".join(lines)


def produce(o):
    if "info" in o:
        print(info_text(o["info"]), flush=True)
    else:
        files.write_bmodel(o["out"], o["combine"])


def main(argv):
    """No banner is documented for tpu_model; NNTC_DOUBLE_NO_OUTPUT suppresses the --info text or
    the combined file."""
    return execute(PROG, argv, lambda: check(argv), produce)
