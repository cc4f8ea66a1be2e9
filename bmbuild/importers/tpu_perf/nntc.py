"""tpu-perf's NNTC commands as recipe keys: fp_compile_options (bmnetp/bmneto), cali
(ufw.cali.cali_model, or time_only_cali), bmnetu_options and the batch sizes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from bmbuild.importers.tpu_perf.command import CommandLine, Flag, parse_bool, parse_floats
from bmbuild.importers.tpu_perf.translator import MODEL_SUFFIXES, Skip, Translator, add_layers
from bmbuild.toolchains.nntc import TARGETS as NNTC_TARGETS

# NNTC front ends: the two bmbuild drives, and the frameworks it does not build.
COMPILERS = {"bmnetp": "torchscript", "bmneto": "onnx"}
OTHER_COMPILERS = {"bmnetc": "Caffe", "bmnett": "TensorFlow", "bmnetm": "MXNet", "bmnetd": "Darknet",
                   "bmpaddle": "PaddlePaddle", "bmnetl": "TFLite", "bmnetu": "UFW umodel"}
# calibration_use_pb -th_method -> calibration.method (+ percentile)
TH_METHODS = {"KL": ("kl", None), "MAX": ("minmax", None), "MSE": ("mse", None),
              "PERCENTILE9999": ("percentile", 99.99)}


def translate_nntc(t: Translator) -> None:
    """fp_compile_options, cali (or time_only_cali), bmnetu_options and batch sizes."""
    config = t.build.config
    fp = t.command("fp_compile_options", loop=_first_loop(t, "fp_loops"))
    cali = t.command("cali")
    fake = t.command("time_only_cali") if cali is None else None
    if cali is not None and "time_only_cali" in config:
        t.note("time_only_cali", "tpu-perf --time only (fake data); the precision build's cali is imported")
    bmnetu = t.command("bmnetu_options", prefix="python3 -m bmnetu ", loop=_first_loop(t, "int8_loops"))
    _nntc_source(t, fp, cali or fake)
    if fp is not None:
        t.apply(fp, _fp_handlers(t))
    else:
        t.note("fp_compile_options", "absent: tpu-perf builds no fp32 bmodel; bmbuild's compile_fp32 builds one")
    int8_possible = False
    if cali is not None:
        int8_possible = _nntc_calibration(t, cali, fake=False)
    elif fake is not None:
        _nntc_calibration(t, fake, fake=True)
    if bmnetu is not None:
        t.apply(bmnetu, _bmnetu_handlers(t))
    elif int8_possible:
        t.note("bmnetu_options", "absent: tpu-perf stops at the int8 umodel; bmbuild also compiles int8 bmodels")
    if int8_possible:
        t.set("prec", "INT8")
    _nntc_batches(t, int8=int8_possible)
    _nntc_loops(t)
    if config.get("build_env"):
        t.lose("build_env", f"{', '.join(map(str, config['build_env']))}: compiler environment variables "
                            "have no recipe key")
    if config.get("concat_files"):
        t.lose("concat_files", "model files assembled from parts before the build: join them and point "
                               "source.model at the result")
    _nntc_layer_names(t)
    _calibration_hint(t, int8=bmnetu is not None or int8_possible)


def _nntc_layer_names(t: Translator) -> None:
    """NNTC names the layers of a PyTorch model itself (pt_to_umodel's '< 24 >14'), so fp32 layers
    given that way mean something to NNTC only: tpu-mlir and the reference name the tensors of an
    ONNX graph. Where NNTC builds the target the recipe keeps them and asks for NNTC; where it does
    not (BM1684X: tpu-mlir), they are untranslated."""
    layers = t.get("int8.fp32_layers") or []
    torch = (t.get("source") or {}).get("framework") == "torchscript"
    nntc_only = [layer for layer in layers if torch or any(c.isspace() for c in layer)]
    if not nntc_only:
        return
    names = ", ".join(nntc_only)
    if t.recipe.get("target", t.zoo.target) in NNTC_TARGETS:
        t.recipe["toolchain"] = "nntc"
        t.note("toolchain: nntc", f"int8.fp32_layers {names} are NNTC's names for the model's layers, which "
                                  "tpu-mlir does not know")
        return
    kept = [layer for layer in layers if layer not in nntc_only]
    if kept:
        t.set("int8.fp32_layers", kept)
    else:
        del t.recipe["int8"]["fp32_layers"]
        if not t.recipe["int8"]:
            del t.recipe["int8"]
    t.lose(f"fp32 layers {names}", "NNTC's names for the model's layers (cali's -fpfwd_outputs / "
                                   "--fp32_layer_list): tpu-mlir, which builds this target, does not know them")


def _calibration_hint(t: Translator, int8: bool) -> None:
    """An FP32 import of a config meant to build int8: its calibration settings go into the hint."""
    if t.get("prec") == "INT8":
        return
    settings = t.recipe.pop("calibration", {})
    if int8 or settings:
        t.hint = {"prec": "INT8"}
        current = t.get("batch_sizes") or [t.recipe["shapes"][0][0]]
        batches = sorted(set(current) | set(_batch_list(t, "bmnetu_batch_sizes")))
        if batches != current:
            t.hint["batch_sizes"] = batches
        t.hint["calibration"] = {"data": "<folder of calibration images>", **settings}


def _nntc_source(t: Translator, fp: CommandLine | None, cali: CommandLine | None) -> None:
    if fp is not None:
        if fp.tool in OTHER_COMPILERS:
            raise Skip(f"unsupported framework: {OTHER_COMPILERS[fp.tool]} ({fp.tool})")
        if fp.tool not in COMPILERS:
            raise Skip(f"unsupported compiler {fp.tool!r} in fp_compile_options")
        model = fp.value("model")
        if not model:
            raise Skip("fp_compile_options names no --model")
        t.source(COMPILERS[fp.tool], model, fp.tool)
        shapes = fp.value("shapes")
        if shapes:
            t.shapes(shapes, "fp_compile_options --shapes")
        elif t.build.shape is not None:
            t.set("shapes", t.build.shape)
        return
    if cali is None or not cali.value("model"):
        raise Skip("neither fp_compile_options nor cali names the model")
    model = str(cali.value("model"))
    framework = MODEL_SUFFIXES.get(Path(model).suffix.lower(), f"unknown ({Path(model).suffix or 'no suffix'})")
    t.source(framework, model, f"{cali.key} --model {Path(model).name}")
    shapes = cali.value("input_shapes")
    if shapes:
        t.shapes(shapes, f"{cali.key} --input_shapes")


def _fp_handlers(t: Translator) -> dict[str, Callable[[Flag], None]]:
    def target(flag: Flag) -> None:
        t.target(str(flag.value), flag.describe())

    def mode(flag: Flag) -> None:
        if flag.value != "compile":
            raise ValueError("bmbuild compiles (mode compile) only")

    return {
        "model": t.ignore(), "shapes": t.ignore(), "net_name": t.net_name, "target": target,
        "opt": lambda f: t.int_value(f, "fp32.opt", (0, 1, 2)),
        "dyn": lambda f: t.bool_value(f, "fp32.dyn"),
        "cmp": lambda f: t.bool_value(f, "fp32.cmp"),
        "enable_profile": lambda f: t.bool_value(f, "fp32.enable_profile"),
        "outdir": t.ignore(), "mode": mode,
    }


def _nntc_calibration(t: Translator, cali: CommandLine, fake: bool) -> bool:
    """ufw.cali.cali_model's flags; True when the config calibrates on real images."""
    state: dict[str, Any] = {"fake": fake}

    def input_shapes(flag: Flag) -> None:
        t.shapes(str(flag.value), flag.describe())

    def iterations(flag: Flag) -> None:
        if not fake:
            t.int_value(flag, "calibration.samples", minimum=1)

    def images(flag: Flag) -> None:
        state["data"] = t.path(str(flag.value))

    def lmdb(flag: Flag) -> None:
        t.lose(flag.describe(), "an LMDB of preprocessed samples: bmbuild reads images or .npy/.npz files")

    def preprocess(flag: Flag) -> None:
        state["preprocess"] = _cali_preprocess(t, str(flag.value), flag.describe())

    def accuracy_opt(flag: Flag) -> None:
        for option in filter(None, (o.strip() for o in str(flag.value).split(";"))):
            _calibration_option(t, option, f"{flag.key} --{flag.name} {option}")

    def th_method(flag: Flag) -> None:
        _calibration_option(t, f"-th_method={flag.value}", flag.describe())

    def layer_list(flag: Flag) -> None:
        add_layers(t, str(flag.value))

    def debug(flag: Flag) -> None:
        for item in filter(None, (i.strip() for i in str(flag.value).split(";"))):
            if item == "use_fake_data_to_test":
                state["fake"] = True
            elif item in ("not_suspend", "not_call_bmnetu", "to_umodel_not_cmp"):
                continue    # bmbuild never pauses, calls bmnetu itself, and pt_to_umodel runs without --cmp
            elif item.startswith("cali_extra_param=--target="):
                t.target(item.rsplit("=", 1)[1], f"{flag.key} --{flag.name} {item}")
            else:
                t.lose(f"{cali.key} --debug_cmd {item}", "no bmbuild equivalent")

    def target(flag: Flag) -> None:
        t.target(str(flag.value), flag.describe())

    handlers = {
        "model": t.ignore(), "weight": t.ignore(), "weights": t.ignore(), "net_name": t.net_name,
        "target": target, "input_shapes": input_shapes, "cali_iterations": iterations,
        "cali_image_path": images, "cali_lmdb": lmdb, "cali_image_preprocess": preprocess,
        "try_cali_accuracy_opt": accuracy_opt, "th_method": th_method, "fp32_layer_list": layer_list,
        "test_iterations": t.ignore("cali_model's own int8 test run; bmbuild compares int8 with fp32 "
                                    "on int8.cmp_samples held-out samples"),
        "postprocess_and_calc_score_class": t.ignore("cali_model's own accuracy score"),
        "debug_cmd": debug,
    }
    t.apply(cali, handlers)
    if state["fake"]:
        t.lose(cali.key, "calibrates on fake data (use_fake_data_to_test), for timing only: built as FP32; "
                         "set prec: INT8 and calibration.data to build int8")
        return False
    if "data" not in state:
        if cali.first("cali_lmdb") is None:
            t.lose(cali.key, "names no calibration images (--cali_image_path): built as FP32")
        return False
    calibration = {"data": state["data"], **t.recipe.get("calibration", {})}
    shapes = t.get("shapes") or []
    calibration["preprocess"] = state.get("preprocess") or _default_preprocess(t, shapes)
    if "samples" not in calibration:
        t.note(cali.key, "no --cali_iterations: bmbuild calibrates on its default 100 samples")
    t.recipe["calibration"] = calibration
    return True


def _default_preprocess(t: Translator, shapes: list[list[int]]) -> dict[str, Any]:
    if shapes and len(shapes[0]) == 4:
        t.note("cali --cali_image_preprocess", f"absent: images resized to the input size {shapes[0][2:]}")
        return {"resize": list(shapes[0][2:])}
    return {}


def _cali_preprocess(t: Translator, text: str, what: str) -> dict[str, Any]:
    """'resize_h=288,resize_w=288;mean_value=123.675:116.28:103.53,scale=0.0171:0.0175:0.0174;bgr2rgb=True'."""
    items: dict[str, str] = {}
    for part in re.split(r"[;,]", text):
        if part.strip():
            key, _, value = part.partition("=")
            items[key.strip()] = value.strip()
    out: dict[str, Any] = {}
    pairs = {"resize": ("resize_h", "resize_w"), "center_crop": ("crop_h", "crop_w")}
    for recipe_key, (h, w) in pairs.items():
        if h in items or w in items:
            if h in items and w in items:
                out[recipe_key] = [int(items.pop(h)), int(items.pop(w))]
            else:
                t.lose(f"{what} ({h}/{w})", "needs both the height and the width")
                items.pop(h, None), items.pop(w, None)
    if "mean_value" in items:
        out["mean"] = parse_floats(items.pop("mean_value"), ":")
    if "scale" in items:
        scale = parse_floats(items.pop("scale"), ":")
        out["scale"] = scale[0] if len(scale) == 1 else scale
    if "bgr2rgb" in items:
        out["bgr2rgb"] = parse_bool(items.pop("bgr2rgb"))
    for key, value in items.items():
        t.lose(f"{what} ({key}={value})", "no calibration.preprocess equivalent")
    return out


def _calibration_option(t: Translator, option: str, what: str) -> None:
    """One calibration_use_pb option of --try_cali_accuracy_opt: '-th_method=MSE', '-fpfwd_outputs=a,b'."""
    key, _, value = option.lstrip("-").partition("=")
    if key == "th_method":
        method = TH_METHODS.get(value.upper())
        if method is None:
            t.lose(what, f"-th_method {value}: bmbuild calibrates with kl, minmax (MAX), mse or percentile "
                         "(PERCENTILE9999)")
            return
        t.set("calibration.method", method[0])
        if method[1] is not None:
            t.set("calibration.percentile", method[1])
    elif key == "fpfwd_outputs":
        add_layers(t, value)
    elif key == "per_channel":
        t.set("int8.per_channel", parse_bool(value))
    else:
        t.lose(what, "no bmbuild equivalent")


def _bmnetu_handlers(t: Translator) -> dict[str, Callable[[Flag], None]]:
    def target(flag: Flag) -> None:
        t.target(str(flag.value), flag.describe())

    def prec(flag: Flag) -> None:
        if str(flag.value).upper() != "INT8":
            raise ValueError("bmbuild compiles int8 umodels with bmnetu (prec INT8) only")

    def shapes(flag: Flag) -> None:
        t.shapes(str(flag.value), flag.describe())

    return {
        "model": t.ignore(), "weight": t.ignore(), "outdir": t.ignore(), "target": target, "prec": prec,
        "net_name": t.net_name, "shapes": shapes,
        "opt": lambda f: t.int_value(f, "int8.opt", (0, 1, 2)),
        "dyn": lambda f: t.bool_value(f, "int8.dyn"),
        "cmp": lambda f: t.bool_value(f, "int8.cmp"),
        "enable_profile": lambda f: t.bool_value(f, "int8.enable_profile"),
    }


def _nntc_batches(t: Translator, int8: bool) -> None:
    """tpu-perf compiles fp32 at the --shapes batch (and fp_batch_sizes with --time) and int8 at each
    of bmnetu_batch_sizes; bmbuild compiles both at every batch size of `batch_sizes`."""
    config = t.build.config
    shapes = t.get("shapes")
    if not shapes:
        raise Skip("no input shapes (--shapes, --input_shapes or shapes:)")
    fp_batches = [shapes[0][0]] + _batch_list(t, "fp_batch_sizes")
    int8_batches = _batch_list(t, "bmnetu_batch_sizes") if int8 else []
    batches = sorted(set(fp_batches + int8_batches))
    if batches != [shapes[0][0]]:
        t.set("batch_sizes", batches)
        extra = sorted(set(batches) - set(fp_batches))
        if extra:
            t.note("batch_sizes", f"bmbuild compiles fp32 at every batch size {batches} (tpu-perf: "
                                  f"{sorted(set(fp_batches))})")
        missing = sorted(set(batches) - set(int8_batches)) if int8 else []
        if missing:
            t.note("batch_sizes", f"bmbuild compiles int8 at every batch size {batches} "
                                  f"(tpu-perf: {sorted(set(int8_batches))})")
    if "fp_batch_sizes" in config:
        t.note("fp_batch_sizes", "tpu-perf uses them with --time only; bmbuild compiles every batch size")


def _batch_list(t: Translator, key: str) -> list[int]:
    value = t.build.config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                              for b in value):
        raise Skip(f"{key}: expected a list of positive integers, got {value!r}")
    return list(value)


def _loops(t: Translator, key: str) -> list[Any]:
    """tpu-perf: config's fp_loops / int8_loops, else the root config's, else one plain build."""
    loops = t.build.config.get(key) or t.zoo.globals.get(key) or []
    if not isinstance(loops, list) or not all(isinstance(loop, dict) for loop in loops):
        raise Skip(f"{key}: expected a list of mappings")
    return loops


def _first_loop(t: Translator, key: str) -> dict[str, Any] | None:
    loops = _loops(t, key)
    return loops[0] if loops else None


def _nntc_loops(t: Translator) -> None:
    """fp_loops / int8_loops: the first is the build imported (its variables expand the command),
    each further one another build of the same model (FP16, other compiler settings)."""
    for key in ("fp_loops", "int8_loops"):
        for i, loop in enumerate(_loops(t, key)):
            settings = {k: v for k, v in loop.items() if k not in ("fp_outdir_template", "int8_outdir_template")}
            env = settings.get("build_env") or []
            prec = str(settings.get("prec", "FP32")).upper()
            if i == 0:
                if env:
                    t.lose(f"{key}[0] build_env", f"{', '.join(map(str, env))}: compiler environment variables "
                                                  "have no recipe key")
                if prec not in ("FP32", "INT8"):
                    t.lose(f"{key}[0] prec {prec}", "bmbuild builds FP32 and INT8 bmodels only")
            elif env or prec not in ("FP32", "INT8") or not set(settings) <= {"build_env", "prec"}:
                t.lose(f"{key}[{i}]", f"another build with {_loop_text(settings)}: no bmbuild equivalent")


def _loop_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "the same settings"


