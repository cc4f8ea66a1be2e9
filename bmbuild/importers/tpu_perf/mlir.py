"""tpu-perf's tpu-mlir commands as recipe keys: mlir_transform (model_transform), mlir_calibration
(run_calibration) and the deploy list (model_deploy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bmbuild.importers.tpu_perf.command import CommandLine, Flag, parse_floats
from bmbuild.importers.tpu_perf.translator import MODEL_SUFFIXES, Skip, Translator, add_layers

# run_calibration --cali_method -> calibration.method (+ percentile)
CALI_METHODS = {"kl": ("kl", None), "max": ("minmax", None), "mse": ("mse", None),
                "percentile9999": ("percentile", 99.99)}


def translate_mlir(t: Translator) -> None:
    """mlir_transform, mlir_calibration and the deploy list."""
    config = t.build.config
    transform = t.command("mlir_transform")
    if transform is None:
        raise Skip("no mlir_transform (tpu-perf has nothing to deploy)")
    model = transform.value("model_def")
    if not model:
        raise Skip("mlir_transform names no --model_def")
    suffix = Path(model).suffix.lower()
    t.source(MODEL_SUFFIXES.get(suffix, f"unknown ({suffix or 'no suffix'})"), model,
             f"model_transform --model_def {Path(model).name}")
    preprocess: dict[str, Any] = {}
    t.apply(transform, _transform_handlers(t, preprocess))
    if not t.get("shapes"):
        if t.build.shape is None:
            raise Skip("no input shapes (--input_shapes or shapes:)")
        t.set("shapes", t.build.shape)
    calibration = t.command("mlir_calibration")
    table = _mlir_calibration(t, calibration) if calibration is not None else None
    deploys = config.get("deploy") or []
    deploys = deploys if isinstance(deploys, list) else [deploys]
    int8 = _deploys(t, [t.command(f"deploy[{i}]", raw) for i, raw in enumerate(deploys)], table)
    _mlir_int8(t, int8, table, preprocess)
    if config.get("mlir_build_env"):
        t.lose("mlir_build_env", "environment variables have no recipe key")


def _transform_handlers(t: Translator, pre: dict[str, Any]) -> dict[str, Callable[[Flag], None]]:
    def shapes(flag: Flag) -> None:
        t.shapes(str(flag.value), flag.describe())

    def name(flag: Flag) -> None:
        t.net_name(flag)

    def outputs(flag: Flag) -> None:
        names = [name.strip() for name in str(flag.value).split(",") if name.strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError("expected distinct tensor names separated by commas")
        t.set("output_names", names)

    def store(key: str, convert: Callable[[str], Any]) -> Callable[[Flag], None]:
        def handle(flag: Flag) -> None:
            pre[key] = (convert(str(flag.value)), flag.describe())
        return handle

    return {
        "model_name": name, "model_def": t.ignore(), "input_shapes": shapes,
        "mean": store("mean", parse_floats), "scale": store("scale", parse_floats),
        "pixel_format": store("pixel_format", str.lower), "channel_format": store("channel_format", str.lower),
        "resize_dims": store("resize_dims", lambda v: [int(x) for x in v.split(",")]),
        "keep_aspect_ratio": lambda f: pre.__setitem__("keep_aspect_ratio", (True, f.describe())),
        "pad_value": store("pad_value", _pad_value), "pad_type": store("pad_type", _pad_type),
        "keep_ratio_mode": store("keep_ratio_mode", _letterbox_mode),
        "output_names": outputs,
        "test_input": t.ignore(), "test_result": t.ignore(), "mlir": t.ignore(), "excepts": t.ignore(),
        "tolerance": t.ignore("model_transform's own top-MLIR check; the F32 deploy's --tolerance "
                              "gives fp32.tolerance"),
        "debug": t.ignore(),
    }


def _pad_value(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise ValueError("expected a pixel value 0..255")
    return value


def _letterbox_mode(text: str) -> str:
    if text != "letterbox":
        raise ValueError("bmbuild letterboxes (keep_aspect_ratio); for short_side_scale use an integer "
                         "calibration.preprocess.resize and center_crop")
    return text


def _pad_type(text: str) -> str:
    if text not in ("center", "normal"):
        raise ValueError("expected center or normal")
    return text


def _mlir_calibration(t: Translator, command: CommandLine) -> dict[str, Any]:
    """run_calibration: dataset, sample count, method; returns the calibration and its table path."""
    found: dict[str, Any] = {}

    def dataset(flag: Flag) -> None:
        found["data"] = t.path(str(flag.value))

    def method(flag: Flag) -> None:
        mapped = CALI_METHODS.get(str(flag.value).lower())
        if mapped is None:
            raise ValueError("bmbuild calibrates with kl, max (minmax), mse or percentile9999")
        found["method"] = mapped[0]
        if mapped[1] is not None:
            found["percentile"] = mapped[1]

    def tune(flag: Flag) -> None:
        if str(flag.value) != "0":
            raise ValueError("tpu-mlir's threshold tuning has no bmbuild equivalent")

    def count(key: str, minimum: int) -> Callable[[Flag], None]:
        def handle(flag: Flag) -> None:
            value = int(str(flag.value))
            if value < minimum:
                raise ValueError(f"expected at least {minimum}")
            found[key] = value
        return handle

    def table(flag: Flag) -> None:
        found["table"] = str(flag.value)

    def chip(flag: Flag) -> None:
        t.target(str(flag.value), flag.describe())

    t.apply(command, {"dataset": dataset, "input_num": count("samples", 1), "cali_method": method,
                      "histogram_bin_num": count("bins", 128), "tune_num": tune, "o": table, "chip": chip},
            positionals=1)
    return found


def _deploys(t: Translator, commands: list[CommandLine | None], calibration: dict[str, Any] | None
             ) -> CommandLine | None:
    """The first F32 deploy gives the fp32 settings and the first INT8 deploy the int8 ones (its
    --asymmetric or none: int8.asymmetric true or false); every other deploy is a build bmbuild does not make. Returns the
    INT8 deploy."""
    fp32 = int8 = None
    for command in filter(None, commands):
        quantize = str(command.value("quantize") or "").upper()
        if quantize == "F32" and fp32 is None:
            fp32 = command
        elif quantize == "INT8" and int8 is None:
            int8 = command
        elif quantize == "INT8" and int8 is not None:
            kind = "asymmetric" if command.first("asymmetric") else "symmetric"
            t.lose(f"{command.key} --quantize INT8{' --asymmetric' if kind == 'asymmetric' else ''}",
                   f"another INT8 build ({kind}): bmbuild builds one int8 bmodel per batch size, here "
                   f"{int8.key}'s (a copy of the recipe with int8.asymmetric: {str(kind == 'asymmetric').lower()} "
                   "builds this one)")
        else:
            t.lose(f"{command.key} --quantize {quantize or '(none)'}",
                   "bmbuild builds one F32 and one INT8 bmodel per batch size")
    if fp32 is not None:
        t.apply(fp32, _deploy_handlers(t, "fp32", calibration))
    else:
        t.note("deploy", "no F32 deploy: bmbuild builds the fp32 bmodel anyway (compile_fp32)")
    if int8 is not None:
        t.apply(int8, _deploy_handlers(t, "int8", calibration))
        if not int8.first("asymmetric"):
            t.set("int8.asymmetric", False)  # the config builds symmetric int8: not bmbuild's default auto
    if "target" not in t.recipe and t.build.mode == "mlir":
        t.target(str(t.build.config.get("target", t.zoo.target)), "$(target)")
    return int8


def _deploy_handlers(t: Translator, role: str, calibration: dict[str, Any] | None
                     ) -> dict[str, Callable[[Flag], None]]:
    def chip(flag: Flag) -> None:
        t.target(str(flag.value), flag.describe())

    def tolerance(flag: Flag) -> None:
        values = parse_floats(str(flag.value))
        if len(values) != 2:
            raise ValueError("expected 'cos,euclid'")
        t.set(f"{role}.tolerance", {"cos": values[0], "euclid": values[1]})

    def table(flag: Flag) -> None:
        if calibration is None or calibration.get("table") != flag.value:
            t.lose(flag.describe(), "a prebuilt calibration table: bmbuild calibrates from data "
                                 "(mlir_calibration / calibration.data)")

    def qtable(flag: Flag) -> None:
        _quantize_table(t, Path(str(flag.value)), flag.describe())

    def cores(flag: Flag) -> None:
        if str(flag.value) != "1":
            raise ValueError("bmbuild builds single-core bmodels")

    def quant_io(flag: Flag) -> None:
        t.lose(flag.describe(), "int8 inputs/outputs: bmbuild's int8 bmodels take and return float")

    def asymmetric(flag: Flag) -> None:
        if role != "int8":
            raise ValueError("applies to INT8 deploys only")
        t.set("int8.asymmetric", True)

    return {
        "mlir": t.ignore(), "quantize": t.ignore(), "chip": chip, "tolerance": tolerance, "asymmetric": asymmetric,
        "calibration_table": table, "quantize_table": qtable, "num_core": cores,
        "quant_input": quant_io, "quant_output": quant_io,
        "correctness": t.ignore("tpu-mlir's simulator-vs-bmodel check; bmbuild has none"),
        "test_input": t.ignore(), "test_reference": t.ignore(), "model": t.ignore(),
        "compare_all": t.ignore(), "debug": t.ignore(),
    }


def _quantize_table(t: Translator, path: Path, what: str) -> None:
    """A tpu-mlir quantize table (`<op name> <mode>` per line): ops kept in F32 -> int8.fp32_layers."""
    if "${" in str(path) or not path.is_file():
        t.lose(what, f"quantize table {path} not found: its layers cannot be read")
        return
    layers = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) == 2 and words[1].upper() in ("F32", "FP32"):
            layers.append(words[0])
        else:
            t.lose(f"{what} ({' '.join(words)})", "only F32 layers have a bmbuild equivalent (int8.fp32_layers)")
    add_layers(t, ",".join(layers))


def _mlir_int8(t: Translator, int8: CommandLine | None, calibration: dict[str, Any] | None,
               pre: dict[str, Any]) -> None:
    """INT8 when an INT8 deploy uses the table mlir_calibration computes from a dataset; otherwise
    the int8 settings stay (unused until calibration data is added) and the hint holds the rest."""
    if int8 is None and calibration is None:
        if pre:
            t.note(", ".join(written for _, written in pre.values()),
                   "model_transform preprocessing, used by tpu-mlir for test inputs only here (no int8 build)")
        return
    table = int8.value("calibration_table") if int8 is not None else None
    buildable = (int8 is not None and calibration is not None and "data" in calibration
                 and table in (None, calibration.get("table")))
    preprocess = _mlir_preprocess(t, pre, applied=buildable)
    settings = {k: calibration[k] for k in ("samples", "method", "percentile", "bins")
                if calibration is not None and k in calibration}
    if buildable and calibration is not None:
        t.set("prec", "INT8")
        t.recipe["calibration"] = {"data": calibration["data"], **settings, "preprocess": preprocess}
        return
    if int8 is None:
        t.note("mlir_calibration", "no INT8 deploy uses its table: built as FP32")
        return
    data = calibration.get("data") if calibration else None
    t.hint = {"prec": "INT8", "calibration": {"data": data or "<folder of calibration images>", **settings,
                                              "preprocess": preprocess}}


def _mlir_preprocess(t: Translator, pre: dict[str, Any], applied: bool) -> dict[str, Any]:
    """model_transform's preprocessing as calibration.preprocess (tpu-mlir: resize to --resize_dims,
    default the input size; centre crop to the input size; (x - mean) * scale in --pixel_format order)."""
    report = t.lose if applied else t.note
    why = "" if applied else " (used by tpu-mlir for test inputs and calibration only; kept in the int8 hint)"
    out: dict[str, Any] = {}
    shapes = t.get("shapes") or [[]]
    layout = pre.get("channel_format", ("nchw", ""))
    if layout[0] in ("nchw", "nhwc"):
        out["layout"] = layout[0].upper()
    else:
        report(layout[1], "no calibration.preprocess layout equivalent" + why)
    dims = shapes[0]
    size = (dims[1:3] if out.get("layout") == "NHWC" else dims[2:4]) if len(dims) == 4 else []
    resize = pre.get("resize_dims", (list(size), ""))[0]
    if resize:
        out["resize"] = resize
        if size and list(resize) != list(size):
            out["center_crop"] = list(size)
    if "mean" in pre:
        out["mean"] = pre["mean"][0]
    if "scale" in pre:
        scale = pre["scale"][0]
        out["scale"] = scale[0] if len(scale) == 1 else scale
    pixel = pre.get("pixel_format", ("bgr", ""))
    if pixel[0] in ("rgb", "bgr"):
        out["bgr2rgb"] = pixel[0] == "rgb"
    else:
        report(pixel[1], "no calibration.preprocess pixel format equivalent" + why)
    if "keep_aspect_ratio" in pre:
        out["keep_aspect_ratio"] = True
        out.update({key: pre[key][0] for key in ("pad_value", "pad_type") if key in pre})
    else:
        for key in ("pad_value", "pad_type"):
            if key in pre:
                t.note(pre[key][1], "applies with --keep_aspect_ratio only (tpu-mlir ignores it here)")
    if out.get("layout") == "NCHW":
        del out["layout"]
    return out


