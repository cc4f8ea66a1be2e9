"""`bmbuild import tpu-perf`: a tpu-perf model zoo (sophgo/model-zoo layout) as bmbuild recipes.

Each model config becomes one recipe: its NNTC commands (`fp_compile_options` for bmnetp/bmneto,
`cali` for `ufw.cali.cali_model`, `bmnetu_options` with `bmnetu_batch_sizes`) or its tpu-mlir
commands (`mlir_transform`, `mlir_calibration`, `deploy`) are parsed flag by flag into recipe keys.
A flag bmbuild has no equivalent for is *untranslated* and named in the report (and in the recipe's
header); a flag that only moves files around or only affects tpu-perf's own checks is *ignored* with
a note. A config whose framework bmbuild does not build (Caffe, TensorFlow, Paddle, ...) is skipped.

`translate_file` is pure (a config in, recipe data and a report out; it reads a quantize table if
one is named); `import_zoo` walks a zoo and `write_import` writes the recipes, a `defaults.yaml`
(the shared target) and a `bmbuild.yaml` whose `vars` are the root config's dataset variables.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from bmbuild.errors import BmbuildError
from bmbuild.importers.tpu_perf_cmd import CommandLine, Flag, parse_bool, parse_command, parse_floats, parse_shapes
from bmbuild.importers.tpu_perf_tree import (ROOT_VAR, Build, ConfigError, Zoo, config_files, find_root,
                                             is_target_key, open_zoo, read_builds)

DEFAULT_OUT = Path("recipes/imported")
TARGETS = ("BM1684", "BM1684X")
CHIPS = {"bm1684": "BM1684", "bm1684x": "BM1684X"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# NNTC front ends: the two bmbuild drives, and the frameworks it does not build.
COMPILERS = {"bmnetp": "torchscript", "bmneto": "onnx"}
OTHER_COMPILERS = {"bmnetc": "Caffe", "bmnett": "TensorFlow", "bmnetm": "MXNet", "bmnetd": "Darknet",
                   "bmpaddle": "PaddlePaddle", "bmnetl": "TFLite", "bmnetu": "UFW umodel"}
MODEL_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".torchscript": "torchscript",
                  ".prototxt": "Caffe", ".caffemodel": "Caffe", ".tflite": "TFLite", ".pb": "TensorFlow",
                  ".pdmodel": "PaddlePaddle", ".cfg": "Darknet", ".json": "MXNet"}
# calibration_use_pb -th_method / run_calibration --cali_method -> calibration.method (+ percentile)
TH_METHODS = {"KL": ("kl", None), "MAX": ("minmax", None), "MSE": ("mse", None),
              "PERCENTILE9999": ("percentile", 99.99)}
CALI_METHODS = {"kl": ("kl", None), "max": ("minmax", None), "mse": ("mse", None),
                "percentile9999": ("percentile", 99.99)}
# Config keys tpu-perf's build reads that have no effect on the bmodels, and why.
RUNTIME_KEYS = {
    "gops": "benchmark metadata", "harness": "accuracy harness of tpu_perf.precision_benchmark",
    "dataset": "accuracy harness data", "precision": "selects the model for tpu_perf's precision runs",
    "time": "selects the model for tpu_perf's --time runs", "runtime_cmp": "tpu_perf.run option",
    "iter_opt": "bmrt_test option", "memory_hint": "tpu-perf's scheduling",
    "build_single_process": "tpu-perf's scheduling", "fp_outdir_template": "tpu-perf's output folder names",
    "int8_outdir_template": "tpu-perf's output folder names", "num_core": "multi-core runs (default 1)",
    "input": "tpu_perf.make_lmdb input (used through $(lmdb_out))",
}
INTERNAL_KEYS = {"name", "shapes", "shape", "shape_key", "shape_param", "home", "workdir", "target", "num_core",
                 "bmnetu_batch_sizes", "fp_batch_sizes", "ignore", "config_fn", "lmdb_out"}
NNTC_KEYS = {"fp_compile_options", "cali", "time_only_cali", "bmnetu_options", "fp_loops", "int8_loops",
             "build_env", "concat_files"}
MLIR_KEYS = {"mlir_transform", "mlir_calibration", "deploy", "mlir_build_env"}


class Skip(Exception):
    """This config cannot become a recipe (the reason is reported)."""


@dataclass
class Translation:
    """One model config as a recipe, with what did not carry over."""

    config: Path
    name: str
    recipe: dict[str, Any] | None = None
    untranslated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hint: dict[str, Any] | None = None      # int8 settings that could not be built as imported
    skipped: str | None = None
    ignored: bool = False                   # skipped on purpose by the config itself

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "ignored" if self.ignored else "skipped"
        return "partial" if self.untranslated else "imported"


# --- one build -----------------------------------------------------------------------------------
class Translator:
    """Collects the recipe of one build and what could not be translated."""

    def __init__(self, build: Build, zoo: Zoo, recipe_dir: Path):
        self.build, self.zoo, self.recipe_dir = build, zoo, recipe_dir
        self.base_name = str(build.config["name"])
        self.recipe: dict[str, Any] = {}
        self.untranslated: list[str] = []
        self.notes: list[str] = []
        self.hint: dict[str, Any] = {}
        self.commands: dict[str, CommandLine] = {}

    # --- bookkeeping ----------------------------------------------------------------------------
    def lose(self, what: str, why: str) -> None:
        _append(self.untranslated, f"{what}: {why}")

    def note(self, what: str, why: str) -> None:
        _append(self.notes, f"{what}: {why}")

    def set(self, dotted: str, value: Any) -> None:
        parts = dotted.split(".")
        node = self.recipe
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.recipe
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    # --- commands -------------------------------------------------------------------------------
    def command(self, key: str, raw: Any = None, prefix: str = "") -> CommandLine | None:
        """The config's command string `key`, expanded and split (None when absent)."""
        raw = self.build.config.get(key) if raw is None else raw
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise Skip(f"{key}: expected a command string, got {type(raw).__name__}")
        command = parse_command(str(self.build.scope.expand(prefix + raw)), key)
        self.commands[key] = command
        return command

    def apply(self, command: CommandLine, handlers: dict[str, Callable[[Flag], None]],
              positionals: int = 0) -> None:
        """Run each flag's handler; a flag without one is untranslated."""
        for env in command.env:
            self.lose(f"{command.key} {env}", "compiler environment variables have no recipe key")
        for word in command.positionals[positionals:]:
            self.lose(f"{command.key} {word}", "unexpected argument")
        for flag in command.flags:
            handler = handlers.get(flag.name)
            if handler is None:
                self.lose(flag.describe(), f"no bmbuild equivalent for {command.tool} --{flag.name}")
                continue
            try:
                handler(flag)
            except ValueError as exc:
                self.lose(flag.describe(), str(exc))

    def ignore(self, why: str | None = None) -> Callable[[Flag], None]:
        """A handler for flags with no effect on the bmodels: noted when `why` is given."""
        def handle(flag: Flag) -> None:
            if why:
                self.note(flag.describe(), why)
        return handle

    # --- values shared by both toolchains --------------------------------------------------------
    def path(self, value: str) -> str:
        """A recipe path: `${var}` paths as they are, others relative to the recipe's folder."""
        if "${" in value:
            return value
        path = Path(value) if os.path.isabs(value) else Path(self.build.config["home"]) / value
        return os.path.relpath(path, self.recipe_dir)

    def source(self, framework: str, model: str, what: str) -> None:
        if framework not in ("onnx", "torchscript"):
            raise Skip(f"unsupported framework: {framework} ({what})")
        self.set("source", {"framework": framework, "model": self.path(model)})
        file = Path(model) if "${" not in model else None
        if file is not None and not file.exists():
            self.note("model", f"{model} is not present (a Git LFS file not fetched?): "
                               "`bmbuild validate` fails until it is")
        elif file is not None and file.is_file() and _is_lfs_pointer(file):
            self.note("model", f"{model} is a Git LFS pointer: run `git lfs pull` before building")

    def shapes(self, text: str, what: str) -> None:
        shapes = parse_shapes(text)
        current = self.get("shapes")
        if current is None:
            self.set("shapes", shapes)
        elif [s[1:] for s in current] != [s[1:] for s in shapes]:
            self.lose(what, f"shapes {text} differ from {_shapes_text(current)}")

    def target(self, value: str, what: str) -> None:
        target = CHIPS.get(value.lower(), value.upper())
        if target not in TARGETS:
            raise Skip(f"unsupported target {value} ({what}): bmbuild builds for {', '.join(TARGETS)}")
        current = self.recipe.get("target")
        if current is None:
            self.recipe["target"] = target
        elif current != target:
            self.lose(what, f"target {target} differs from {current} used by the other commands")

    def net_name(self, flag: Flag) -> None:
        if flag.value != self.base_name:
            self.lose(flag.describe(), f"bmbuild names the net after the recipe ({self.base_name})")

    def int_value(self, flag: Flag, dotted: str, choices: tuple[int, ...] | None = None,
                  minimum: int | None = None) -> None:
        try:
            value = int(str(flag.value))
        except ValueError:
            raise ValueError(f"not an integer: {flag.value!r}") from None
        if choices is not None and value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        if minimum is not None and value < minimum:
            raise ValueError(f"expected at least {minimum}")
        self.set(dotted, value)

    def bool_value(self, flag: Flag, dotted: str) -> None:
        self.set(dotted, parse_bool(flag.value))


def _append(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _shapes_text(shapes: list[list[int]]) -> str:
    return ",".join("[" + ",".join(map(str, s)) + "]" for s in shapes)


def _is_lfs_pointer(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            return handle.read(48).startswith(b"version https://git-lfs.github.com/spec/")
    except OSError:
        return False


# --- NNTC ----------------------------------------------------------------------------------------
def translate_nntc(t: Translator) -> None:
    """fp_compile_options, cali (or time_only_cali), bmnetu_options and batch sizes."""
    config = t.build.config
    fp = t.command("fp_compile_options")
    cali = t.command("cali")
    fake = t.command("time_only_cali") if cali is None else None
    if cali is not None and "time_only_cali" in config:
        t.note("time_only_cali", "tpu-perf --time only (fake data); the precision build's cali is imported")
    bmnetu = t.command("bmnetu_options", prefix="python3 -m bmnetu ")
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
    _calibration_hint(t, int8=bmnetu is not None or int8_possible)


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
        _add_layers(t, str(flag.value))

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
        _add_layers(t, value)
    elif key == "per_channel":
        t.set("int8.per_channel", parse_bool(value))
    else:
        t.lose(what, "no bmbuild equivalent")


def _add_layers(t: Translator, text: str) -> None:
    layers = t.get("int8.fp32_layers", [])
    for layer in (item.strip() for item in text.split(",")):
        if layer and layer not in layers:
            layers.append(layer)
    t.set("int8.fp32_layers", layers)


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


def _nntc_loops(t: Translator) -> None:
    """fp_loops / int8_loops: more builds of the same model (FP16, other compiler settings)."""
    for key in ("fp_loops", "int8_loops"):
        loops = t.build.config.get(key) or t.zoo.globals.get(key) or []
        if not isinstance(loops, list):
            t.lose(key, "expected a list of loop settings")
            continue
        for i, loop in enumerate(loops):
            if not isinstance(loop, dict):
                t.lose(f"{key}[{i}]", "expected a mapping")
                continue
            settings = {k: v for k, v in loop.items() if k not in ("fp_outdir_template", "int8_outdir_template")}
            plain = not settings.get("build_env") and str(settings.get("prec", "FP32")).upper() in ("FP32", "INT8")
            if plain and set(settings) <= {"build_env", "prec"}:
                continue
            t.lose(f"{key}[{i}]", f"another build with {_loop_text(settings)}: no bmbuild equivalent")


def _loop_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "the same settings"


# --- tpu-mlir ------------------------------------------------------------------------------------
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
        "pad_value": store("pad_value", str), "pad_type": store("pad_type", str),
        "output_names": lambda f: t.lose(f.describe(), "bmbuild compiles the whole graph: cut the model at "
                                                    "these outputs before importing it"),
        "test_input": t.ignore(), "test_result": t.ignore(), "mlir": t.ignore(), "excepts": t.ignore(),
        "tolerance": t.ignore("model_transform's own top-MLIR check; the F32 deploy's --tolerance "
                              "gives fp32.tolerance"),
        "debug": t.ignore(),
    }


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

    t.apply(command, {"dataset": dataset, "input_num": count("samples", 1), "cali_method": method,
                      "histogram_bin_num": count("bins", 128), "tune_num": tune, "o": table}, positionals=1)
    return found


def _deploys(t: Translator, commands: list[CommandLine | None], calibration: dict[str, Any] | None
             ) -> CommandLine | None:
    """The first F32 deploy gives the fp32 settings and the first symmetric INT8 deploy the int8
    ones; every other deploy is a build bmbuild does not make. Returns the INT8 deploy."""
    fp32 = int8 = None
    for command in filter(None, commands):
        quantize = str(command.value("quantize") or "").upper()
        if quantize == "INT8" and command.first("asymmetric"):
            t.lose(f"{command.key} --asymmetric", "asymmetric int8 has no bmbuild equivalent (symmetric only)")
        elif quantize == "F32" and fp32 is None:
            fp32 = command
        elif quantize == "INT8" and int8 is None:
            int8 = command
        else:
            t.lose(f"{command.key} --quantize {quantize or '(none)'}",
                   "bmbuild builds one F32 and one symmetric INT8 bmodel per batch size")
    if fp32 is not None:
        t.apply(fp32, _deploy_handlers(t, "fp32", calibration))
    else:
        t.note("deploy", "no F32 deploy: bmbuild builds the fp32 bmodel anyway (compile_fp32)")
    if int8 is not None:
        t.apply(int8, _deploy_handlers(t, "int8", calibration))
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

    return {
        "mlir": t.ignore(), "quantize": t.ignore(), "chip": chip, "tolerance": tolerance,
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
    _add_layers(t, ",".join(layers))


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
    for key in ("keep_aspect_ratio", "pad_value", "pad_type"):
        if key in pre:
            report(pre[key][1], "letterbox resizing has no calibration.preprocess equivalent "
                                "(bmbuild stretches to resize)" + why)
    if out.get("layout") == "NCHW":
        del out["layout"]
    return out


# --- keys of the config ----------------------------------------------------------------------------
def report_keys(t: Translator, written: dict[str, Any]) -> None:
    """Every key of the config as written is translated, a variable, or noted as ignored."""
    used = t.build.scope.used
    handled = NNTC_KEYS if t.build.mode == "nntc" else MLIR_KEYS
    for key in map(str, written):
        if key in handled or key in INTERNAL_KEYS or key in used:
            continue
        if is_target_key(key):
            if t.zoo.target not in key.split("/"):
                t.note(key, f"block for another target (importing for {t.zoo.target})")
            continue
        if key.startswith("+"):
            continue
        why = RUNTIME_KEYS.get(key)
        if why:
            continue   # runtime and scheduling settings: listed in the README, not per recipe
        other = NNTC_KEYS | MLIR_KEYS
        t.note(key, "a command of the other toolchain" if key in other else "not read by tpu-perf's build")


# --- one config file ------------------------------------------------------------------------------
def recipe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._") or "model"
    return cleaned if NAME_PATTERN.match(cleaned) else f"m{cleaned}"


def recipe_path(file: Path, zoo: Zoo, out: Path, name: str) -> Path:
    folder = file.parent.resolve()
    relative = folder.relative_to(zoo.root) if folder == zoo.root or zoo.root in folder.parents else Path()
    return out / relative / f"{name}.yaml"


def translate_file(file: Path, zoo: Zoo, out: Path) -> list[Translation]:
    """The recipes one model config stands for (one per toolchain flavour it has)."""
    try:
        builds, written, reason = read_builds(file, zoo)
    except ConfigError as exc:
        return [Translation(file, _written_name(file), skipped=str(exc))]
    if not builds:
        return [Translation(file, str(written.get("name") or _written_name(file)),
                            skipped=reason or "nothing to build", ignored=True)]
    by_flavour: dict[str, list[Build]] = {}
    for build in builds:
        by_flavour.setdefault(build.mode, []).append(build)
    results = []
    for mode, group in by_flavour.items():
        name = recipe_name(str(group[0].config["name"]) + ("-mlir" if mode == "mlir" and len(by_flavour) > 1 else ""))
        results.append(_translate_group(file, zoo, group, name, recipe_path(file, zoo, out, name), written))
    return results


def _written_name(file: Path) -> str:
    return file.parent.name if file.name == "config.yaml" else file.name.removesuffix(".config.yaml")


def _translate_group(file: Path, zoo: Zoo, builds: list[Build], name: str, path: Path,
                     written: dict[str, Any]) -> Translation:
    """One build per shape of one config, merged into one recipe (batch sizes or variants)."""
    parts: list[Translator] = []
    try:
        for build in builds:
            t = Translator(build, zoo, path.parent.resolve())
            (translate_nntc if build.mode == "nntc" else translate_mlir)(t)
            report_keys(t, written)
            parts.append(t)
    except (Skip, ConfigError, ValueError) as exc:
        return Translation(file, name, skipped=str(exc))
    result = Translation(file, name, hint=parts[0].hint or None)
    for t in parts:
        for item in t.untranslated:
            _append(result.untranslated, item)
        for item in t.notes:
            _append(result.notes, item)
    if str(builds[0].config["name"]) != name and not name.endswith("-mlir"):
        result.notes.insert(0, f"name: {builds[0].config['name']!r} is not a bmbuild recipe name; using {name!r}")
    recipe = _merge_shapes([t.recipe for t in parts], builds)
    result.recipe = _ordered(name, recipe, file, zoo)
    return result


def _merge_shapes(recipes: list[dict[str, Any]], builds: list[Build]) -> dict[str, Any]:
    """tpu-perf builds each entry of `shapes` on its own. Entries that differ in batch only become
    batch sizes of one recipe; others become variants (name_<shape key>)."""
    first = recipes[0]
    if len(recipes) == 1:
        return first
    shapes = [r["shapes"] for r in recipes]
    rest = [{k: v for k, v in r.items() if k not in ("shapes", "batch_sizes")} for r in recipes]
    same_rest = all(r == rest[0] for r in rest)
    same_dims = all([s[1:] for s in shape] == [s[1:] for s in shapes[0]] for shape in shapes)
    merged = copy.deepcopy(first)
    if same_rest and same_dims:
        batches = sorted({b for r in recipes for b in (r.get("batch_sizes") or [r["shapes"][0][0]])})
        merged["batch_sizes"] = batches
        return merged
    merged["variants"] = [{"suffix": b.shape_key or f"v{i}", **{k: v for k, v in r.items() if v != first.get(k)}}
                          for i, (r, b) in enumerate(zip(recipes, builds, strict=True))]
    return merged


KEY_ORDER = ("name", "description", "source", "shapes", "target", "prec", "batch_sizes", "fp32",
             "calibration", "int8", "variants")


def _ordered(name: str, recipe: dict[str, Any], file: Path, zoo: Zoo) -> dict[str, Any]:
    """Recipe keys in the README's order; the target only where it differs from defaults.yaml."""
    recipe = dict(recipe)
    recipe["name"] = name
    recipe["description"] = f"imported from tpu-perf {_relative(file, zoo)}"
    if recipe.get("target") == zoo.target:
        del recipe["target"]
    if recipe.get("prec") == "FP32":
        del recipe["prec"]
    return {key: recipe[key] for key in KEY_ORDER if key in recipe}


def _relative(file: Path, zoo: Zoo) -> str:
    try:
        return str(file.resolve().relative_to(zoo.root))
    except ValueError:
        return str(file)


# --- a whole zoo ----------------------------------------------------------------------------------
@dataclass
class ImportResult:
    zoo: Zoo
    out: Path
    translations: list[Translation]

    def count(self, status: str) -> int:
        return sum(1 for t in self.translations if t.status == status)

    @property
    def problems(self) -> int:
        return self.count("partial") + self.count("skipped")


class ImportIncomplete(BmbuildError):
    """--strict: some configs were not imported completely (exit 2)."""


def import_zoo(path: Path, out: Path = DEFAULT_OUT, target: str = "BM1684", root: Path | None = None
               ) -> ImportResult:
    """Translate every model config below `path` (a tpu-perf root or a folder inside one)."""
    path = Path(path)
    if not path.exists():
        raise BmbuildError(f"{path}: no such file or folder")
    if target not in TARGETS:
        raise BmbuildError(f"target {target}: bmbuild builds for {', '.join(TARGETS)}")
    folder = path.parent if path.is_file() else path
    zoo_root = Path(root).resolve() if root else find_root(folder)
    try:
        zoo = open_zoo(zoo_root, target)
    except ConfigError as exc:
        raise BmbuildError(f"{zoo_root}: root config: {exc}") from None
    files = [path.resolve()] if path.is_file() else config_files(path, zoo)
    translations: list[Translation] = []
    for file in files:
        translations += translate_file(file, zoo, out.resolve())
    _check_unique(translations, zoo)
    return ImportResult(zoo, out, translations)


def _check_unique(translations: list[Translation], zoo: Zoo) -> None:
    seen: dict[str, Path] = {}
    for t in translations:
        if t.recipe is None:
            continue
        if t.name in seen:
            t.skipped = f"recipe name {t.name!r} is also used by {_relative(seen[t.name], zoo)}"
            t.recipe = None
        else:
            seen[t.name] = t.config


def write_import(result: ImportResult) -> list[Path]:
    """Write the recipes, defaults.yaml and bmbuild.yaml; returns the files written."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in result.translations:
        if t.recipe is None:
            continue
        path = recipe_path(t.config, result.zoo, out, t.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_recipe(t, result.zoo), encoding="utf-8")
        written.append(path)
    written.append(_write_defaults(result))
    written.append(_write_workspace(result))
    return written


def render_recipe(t: Translation, zoo: Zoo) -> str:
    assert t.recipe is not None
    lines = [f"# Imported from tpu-perf {_relative(t.config, zoo)} (target {zoo.target}) by",
             "# `bmbuild import tpu-perf`; importing again overwrites this file."]
    if t.untranslated:
        lines.append("# Not translated (this recipe builds without them):")
        lines += [f"#   - {item}" for item in t.untranslated]
    text = "\n".join(lines) + "\n" + _dump(t.recipe)
    if t.hint:
        text += "# To build int8, add calibration images and uncomment:\n"
        text += "".join(f"# {line}\n" for line in _dump(t.hint).splitlines())
    return text


def _dump(data: Any, flow: bool | None = None) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, width=110, allow_unicode=True)


def _write_defaults(result: ImportResult) -> Path:
    zoo = result.zoo
    path = result.out / "defaults.yaml"
    header = [f"# Shared by the recipes imported from tpu-perf {zoo.root} (`bmbuild import tpu-perf`).",
              f"# tpu-perf's --target ({zoo.target}) selects every config's per-target blocks."]
    ignored = [key for key in zoo.root_keys if key in RUNTIME_KEYS or key in ("data_dir", "default_cases")]
    if ignored:
        header.append(f"# Root config keys with no build effect, not imported: {', '.join(ignored)}.")
    path.write_text("\n".join(header) + "\n" + _dump({"target": zoo.target}), encoding="utf-8")
    return path


def _write_workspace(result: ImportResult) -> Path:
    """bmbuild.yaml `vars`: the root config's variables. Values already there win (a dataset moved)."""
    path = result.out / "bmbuild.yaml"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise BmbuildError(f"{path}: cannot update its vars: {exc}") from None
        data = loaded if isinstance(loaded, dict) else {}
    existing = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    data["vars"] = {**result.zoo.variables, **existing}
    header = (f"# Workspace of the recipes imported from tpu-perf {result.zoo.root}: its root config's\n"
              f"# variables, as ${{name}}; {ROOT_VAR} is tpu-perf's $(root). Run bmbuild from this folder.\n")
    path.write_text(header + _dump(data, flow=False), encoding="utf-8")
    return path


def render_report(result: ImportResult) -> list[str]:
    """One line per config, then its untranslated items and notes, then the summary."""
    lines = []
    for t in result.translations:
        where = _relative(t.config, result.zoo)
        if t.recipe is not None:
            target = recipe_path(t.config, result.zoo, result.out, t.name)
            lines.append(f"{t.status:<9} {where} -> {target}")
        else:
            lines.append(f"{t.status:<9} {where}: {t.skipped}")
        lines += [f"            untranslated: {item}" for item in t.untranslated]
        lines += [f"            note: {item}" for item in t.notes]
    lines.append(summary(result))
    return lines


def summary(result: ImportResult) -> str:
    parts = [f"{result.count(s)} {s}" for s in ("imported", "partial", "skipped")]
    ignored = result.count("ignored")
    text = f"{len(result.translations)} config(s): {', '.join(parts)}"
    return text + (f", {ignored} ignored (nothing to build)" if ignored else "")
