"""The NNTC toolchain (SophonSDK 3.x, BM1684): the vendor's own tools, driven from the same recipes.

    compile_fp32  python3 -m bmnetp ... (bmneto for ONNX)     -> <N>b.fp32.compilation/compilation.bmodel
    calibrate     LMDB (ufwio) + python3 -m ufw.tools.pt_to_umodel (on_to_umodel) + calibration_use_pb quantize
    quantize      <name>_bmnetp.int8umodel + <name>_bmnetp_deploy_int8_unique_top.prototxt
    compile_int8  bmnetu -prec=INT8 ...                        -> <N>b.compilation/compilation.bmodel
                  (+ tpu_model --combine of the batch sizes  -> combined.bmodel)

Every flag and file name follows shared/reference/sophgo-toolchains.md, bmnetp.md and bmnetu.md.
Python tools run as `sys.executable -m <module>` rather than a bare `python3`: the SDK's envsetup
pip-installs bmnetp/ufw into the active Python, and `sys.executable` is that Python — the one whose
modules `availability()` found — while `python3` on PATH may be another interpreter.

Each command runs in the stage's private work folder (the vendor tools write beside their inputs),
is a step (bmbuild.steps) appended to `build/<recipe>/logs/<stage>.cmd` as it runs, its output
streamed into the stage's log. `tpu_model --info` of every bmodel goes into the stage's metrics
(`bmodels`), hence into report.json.

Nothing here imports the SDK: detection uses `importlib.util.find_spec` and `shutil.which`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import bmbuild
from bmbuild.errors import ToolchainError
from bmbuild.recipe import LoadedRecipe
from bmbuild.stagecontext import StageContext
from bmbuild.commands import Command, quote
from bmbuild.pipeline import StageName
from bmbuild.steps import InProcess, Step
from bmbuild.toolchains.base import Availability, package_version
from bmbuild.toolchains.bmodel_info import info_steps

# Bump when this adapter changes the commands it runs or the files it keeps: part of every key.
IMPLEMENTATION_VERSION = "1"
PY_MODULES = ("bmnetp", "bmnetu", "ufw", "ufwio")
OPTIONAL_MODULES = ("bmneto",)      # ONNX sources only; in the versions when installed
EXECUTABLES = ("bmnetu", "calibration_use_pb", "tpu_model")
TARGETS = ("BM1684",)               # NNTC 3.x; BM1684X is tpu-mlir's
# recipe calibration.method -> calibration_use_pb -th_method (its documented choices:
# KL|SYMKL|JSD|ADMM|ACIQ|MAX|PERCENTILE9999|MSE)
TH_METHODS = {"minmax": "MAX", "percentile": "PERCENTILE9999", "kl": "KL", "mse": "MSE"}
NNTC_PERCENTILE = 99.99
SDK_HINT = ("install the SophonSDK 3.x and `source` its environment script (envsetup_cmodel.sh or "
            "envsetup_pcie.sh) in this shell, with the Python that runs bmbuild")


# source framework -> NNTC front end: compiler module, ufw.tools converter to an fp32 umodel, and the
# suffix of the model copy compile_fp32 keeps for calibration. ONNX goes through bmneto/on_to_umodel
# (their files are <name>_bmneto..., as in the vendor's zoo configs); TorchScript through bmnetp.
FRONT_ENDS = {"onnx": ("bmneto", "on_to_umodel", ".onnx")}
PYTORCH_FRONT_END = ("bmnetp", "pt_to_umodel", ".pt")


def front_end(ctx: StageContext) -> tuple[str, str, str]:
    return FRONT_ENDS.get(ctx.recipe.source.framework, PYTORCH_FRONT_END)


# --- file names (sophgo-toolchains.md) ---------------------------------------------------------
def umodel_stem(name: str, compiler: str = "bmnetp") -> str:
    """pt_to_umodel -n <name> writes <name>_bmnetp.fp32umodel (on_to_umodel: _bmneto); calibration keeps the stem."""
    return f"{name}_{compiler}"


def calibration_outputs(name: str, compiler: str = "bmnetp") -> tuple[str, str, str]:
    """What calibration_use_pb writes next to -weights: int8 umodel, int8 and fp32 deploy prototxts."""
    stem = umodel_stem(name, compiler)
    return (f"{stem}.int8umodel", f"{stem}_deploy_int8_unique_top.prototxt",
            f"{stem}_deploy_fp32_unique_top.prototxt")


def fp32_folder(batch: int) -> str:
    return f"{batch}b.fp32.compilation"


def int8_folder(batch: int) -> str:
    return f"{batch}b.compilation"


COMBINED = "combined.bmodel"       # tpu_model --combine of every batch size (one multi-stage bmodel)
COMBINED_LABEL = "combined"


# --- value spellings the tools accept -----------------------------------------------------------
def shapes_nested(shapes: list[list[int]]) -> str:
    """bmnetp --shapes: [[1,3,224,224],[1,10]] (no spaces)."""
    return "[" + shapes_flat(shapes) + "]"


def shapes_flat(shapes: list[list[int]]) -> str:
    """bmnetu -shapes: [1,3,224,224],[1,10] (no outer brackets, no spaces)."""
    return ",".join("[" + ",".join(map(str, shape)) + "]" for shape in shapes)


def shape_tuple(shape: list[int]) -> str:
    """pt_to_umodel -s: (1,3,224,224)."""
    return "(" + ",".join(map(str, shape)) + ")"


def py_bool(value: bool) -> str:
    """bmnetp/bmnetu booleans: True / False."""
    return "True" if value else "False"


def gflags_bool(value: bool) -> str:
    """calibration_use_pb booleans: true / false."""
    return "true" if value else "false"


# --- versions (no SDK import in this process) ---------------------------------------------------
_lock = threading.Lock()


def _distribution_version(module: str) -> str | None:
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        pass
    for dist in _packages_distributions().get(module, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def _spec_origin(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or ",".join(spec.submodule_search_locations or []) or module


_probed: dict[tuple[Any, ...], dict[str, str]] = {}
_PROBE = """
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
    except Exception:
        found[name] = "unimportable"
print(json.dumps(found))
"""


def _probe_versions(modules: list[str]) -> dict[str, str]:
    """`__version__` of modules that are not installed distributions (e.g. on PYTHONPATH only),
    read by a child Python so the SDK is never imported into bmbuild. Cached per location."""
    key = (sys.executable, os.environ.get("PYTHONPATH"), tuple((m, _spec_origin(m)) for m in modules))
    with _lock:
        if key in _probed:
            return _probed[key]
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        found = {}
    result = {m: found.get(m, "unknown") for m in modules}
    with _lock:
        _probed[key] = result
    return result


_digests: dict[tuple[str, int, int], str] = {}


def executable_digest(path: str) -> str:
    """sha256 (16 hex) of an executable's content: the same SDK on two machines gives the same
    key, a different build of a tool does not. Cached per (path, size, mtime)."""
    import hashlib

    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    value = "sha256:" + digest.hexdigest()[:16]
    with _lock:
        _digests[key] = value
    return value


def torch_hint() -> str:
    """Added to bmnetp's failures when the torch here is not the one the vendor recommends."""
    from bmbuild.torchmodel import torch_note

    version = package_version("torch")
    note = torch_note(version) if version != "absent" else ""
    return f"traced with {note}: bmnetp may reject operators newer versions emit" if note else ""


class NntcToolchain:
    """bmnetp, ufw (pt_to_umodel, ufwio), calibration_use_pb, bmnetu and tpu_model from the SophonSDK."""

    name = "nntc"
    exports_eager = False  # bmnetp compiles the traced file: compile_fp32 is keyed on it, not on the source
    # the stage parameters beyond the common ones that the SDK's commands read (the key holds only these)
    consumes = {
        StageName.COMPILE_FP32.value: ("target", "opt", "dyn", "cmp", "enable_profile"),
        StageName.CALIBRATE.value: ("fp32_layers", "per_channel"),
        StageName.QUANTIZE.value: ("fp32_layers",),
        StageName.COMPILE_INT8.value: ("target", "opt", "dyn", "cmp", "enable_profile"),
    }
    optional_keys: frozenset[str] = frozenset()
    reshapes_batch = True  # bmnetp/bmneto --shapes: a fixed-batch ONNX model compiles at any batch size

    def __init__(self) -> None:
        self._versions: dict[str, str] | None = None

    # --- detection ----------------------------------------------------------------------------
    def availability(self) -> Availability:
        missing_modules = [m for m in PY_MODULES if _spec_origin(m) is None]
        missing_commands = [c for c in EXECUTABLES if shutil.which(c) is None]
        if missing_modules or missing_commands:
            problems = []
            if missing_modules:
                problems.append(f"Python modules not importable by {sys.executable}: {', '.join(missing_modules)}")
            if missing_commands:
                problems.append(f"commands not on PATH: {', '.join(missing_commands)}")
            return Availability(False, "SophonSDK not found", "; ".join(problems) + f" ({SDK_HINT})")
        versions = self.versions()
        return Availability(True, f"bmnetp {versions['bmnetp']}, bmnetu {versions['bmnetu']}")

    def versions(self) -> dict[str, str]:
        """Package versions of the SDK's Python modules and content digests of its commands."""
        if self._versions is None:
            modules = PY_MODULES + tuple(m for m in OPTIONAL_MODULES if _spec_origin(m) is not None)
            found = {m: _distribution_version(m) for m in modules}
            absent = [m for m, v in found.items() if v is None and _spec_origin(m) is not None]
            probed = _probe_versions(absent) if absent else {}
            versions = {"implementation": IMPLEMENTATION_VERSION}
            for module, version in found.items():
                versions[module] = version or probed.get(module, "absent")
            for command in EXECUTABLES:
                path = shutil.which(command)
                versions[f"{command} (command)"] = executable_digest(path) if path else "absent"
            self._versions = versions
        return dict(self._versions)

    # --- checks shared by the run and --dry-run -----------------------------------------------
    def preflight(self, loaded: LoadedRecipe) -> None:
        """What NNTC cannot build, said by `validate` and before `run` starts any stage."""
        self._check_recipe(loaded)
        if loaded.recipe.prec == "INT8":
            self._single_input(loaded)

    @staticmethod
    def _check_recipe(loaded: LoadedRecipe) -> None:
        recipe = loaded.recipe
        if recipe.target not in TARGETS:
            raise loaded.error(f"NNTC (SophonSDK 3.x) compiles for {', '.join(TARGETS)} only; "
                               f"{recipe.target} needs tpu-mlir", ("target",))

    @staticmethod
    def _single_input(loaded: LoadedRecipe) -> None:
        recipe = loaded.recipe
        if len(recipe.shapes) != 1:
            raise loaded.error("NNTC calibration feeds one input (the Data layer of pt_to_umodel's test "
                               f"prototxt); this recipe has {len(recipe.shapes)}", ("shapes",))
        if recipe.input_specs[0].batch_axis != 0:
            raise loaded.error("NNTC calibration feeds its input batch first (an LMDB of [1, ...] records)",
                               ("inputs", 0, "batch_axis"))

    # --- command lines ------------------------------------------------------------------------
    def fp32_commands(self, ctx: StageContext) -> list[Command]:
        """One bmnetp (bmneto for ONNX) per batch size, into <N>b.fp32.compilation/."""
        from bmbuild.artifacts import source_model

        self._check_recipe(ctx.loaded)
        params, model = ctx.params, source_model(ctx)
        compiler = front_end(ctx)[0]
        hint = torch_hint() if compiler == "bmnetp" else ""
        commands = []
        for batch in params["batch_sizes"]:
            outdir = ctx.out_dir / fp32_folder(batch)
            argv = [sys.executable, "-m", compiler, f"--model={model}",
                    f"--shapes={shapes_nested(ctx.recipe.shapes_for_batch(batch))}",
                    f"--net_name={params['net_name']}", f"--target={params['target']}", f"--opt={params['opt']}",
                    f"--dyn={py_bool(params['dyn'])}", f"--cmp={py_bool(params['cmp'])}", f"--outdir={outdir}"]
            if params["enable_profile"]:
                argv.append("--enable_profile=True")
            commands.append(Command(compiler, tuple(argv), ctx.work_dir, outputs=(outdir / "compilation.bmodel",),
                                    banner=True, hint=hint))
        return commands

    def calibrate_commands(self, ctx: StageContext) -> list[Command]:
        """LMDB of the calibration samples, the fp32 umodel, then calibration_use_pb, all in the work dir."""
        self._check_recipe(ctx.loaded)
        self._single_input(ctx.loaded)
        recipe, params, work = ctx.recipe, ctx.params, ctx.work_dir
        cfg = recipe.calibration
        assert cfg is not None
        th_method = self._th_method(ctx)
        name = recipe.name
        lmdb, umodel_dir = work / "lmdb", work / "umodel"
        input_shape = [1, *recipe.shapes[0][1:]]
        bmbuild_root = str(Path(bmbuild.__file__).resolve().parents[1])
        pythonpath = os.pathsep.join(filter(None, [bmbuild_root, os.environ.get("PYTHONPATH")]))
        write = Command("ufwio.LMDB_Dataset", (
            sys.executable, "-m", "bmbuild.toolchains.nntc_lmdb", "--calibration", cfg.model_dump_json(),
            "--holdout", str(params["holdout"]), "--input-shape", ",".join(map(str, input_shape)), str(lmdb)),
            work, env={"PYTHONPATH": pythonpath}, outputs=(lmdb / "data.mdb",))
        compiler, converter, _ = front_end(ctx)
        stem = umodel_dir / umodel_stem(name, compiler)
        prototxt, fp32umodel = Path(f"{stem}_test_fp32.prototxt"), Path(f"{stem}.fp32umodel")
        to_umodel = Command(converter, (
            sys.executable, "-m", f"ufw.tools.{converter}", "-m", str(self.traced_model(ctx)),
            "-s", shape_tuple(input_shape), "-d", str(umodel_dir), "-D", str(lmdb), "-n", name),
            work, outputs=(prototxt, fp32umodel))
        argv = ["calibration_use_pb", "quantize", f"-model={prototxt}", f"-weights={fp32umodel}",
                f"-iterations={params['samples']}", "-bitwidth=TO_INT8", f"-th_method={th_method}"]
        layers = self._fp32_layers(ctx)
        if layers:
            argv.append(f"-fpfwd_outputs={','.join(layers)}")
        if "per_channel" in params:  # only when the calibrate stage keys it
            argv.append(f"-per_channel={gflags_bool(params['per_channel'])}")
        quantize = Command("calibration_use_pb", tuple(argv), work,
                           outputs=tuple(umodel_dir / f for f in self.outputs(ctx)))
        return [write, to_umodel, quantize]

    def int8_commands(self, ctx: StageContext) -> list[Command]:
        """One bmnetu -prec=INT8 per batch size, then tpu_model --combine when there are several."""
        self._check_recipe(ctx.loaded)
        params = ctx.params
        int8umodel, deploy, _ = self.outputs(ctx)
        source = ctx.inputs[StageName.QUANTIZE]
        commands = []
        for batch in params["batch_sizes"]:
            outdir = ctx.out_dir / int8_folder(batch)
            argv = ("bmnetu", f"-model={source / deploy}", f"-weight={source / int8umodel}", "-prec=INT8",
                    f"-shapes={shapes_flat(ctx.recipe.shapes_for_batch(batch))}", f"-net_name={params['net_name']}",
                    f"-opt={params['opt']}", f"-dyn={py_bool(params['dyn'])}", f"-cmp={py_bool(params['cmp'])}",
                    f"-outdir={outdir}", f"-target={params['target']}")
            if params.get("enable_profile"):
                argv += ("-enable_profile=True",)
            commands.append(Command("bmnetu", argv, ctx.work_dir, outputs=(outdir / "compilation.bmodel",),
                                    banner=True))
        bmodels = self.int8_bmodels(ctx)
        if COMBINED_LABEL in bmodels:
            parts = [str(path) for label, path in bmodels.items() if label != COMBINED_LABEL]
            combined = bmodels[COMBINED_LABEL]
            commands.append(Command("tpu_model", ("tpu_model", "--combine", *parts, "-o", str(combined)),
                                    ctx.work_dir, outputs=(combined,)))
        return commands

    @staticmethod
    def traced_model(ctx: StageContext) -> Path:
        """The model compile_fp32 keeps for calibration (pt_to_umodel's / on_to_umodel's -m)."""
        return ctx.inputs[StageName.COMPILE_FP32] / f"{ctx.recipe.name}{front_end(ctx)[2]}"

    @staticmethod
    def outputs(ctx: StageContext) -> tuple[str, str, str]:
        return calibration_outputs(ctx.recipe.name, front_end(ctx)[0])

    @staticmethod
    def _th_method(ctx: StageContext) -> str:
        params = ctx.params
        if params["method"] == "percentile" and params["percentile"] != NNTC_PERCENTILE:
            raise ctx.loaded.error(
                f"calibration_use_pb supports only percentile {NNTC_PERCENTILE} (-th_method=PERCENTILE9999), "
                f"not {params['percentile']}", ("calibration", "percentile"),
                hint="set percentile: 99.99, or use the reference toolchain")
        return TH_METHODS[params["method"]]

    @staticmethod
    def _fp32_layers(ctx: StageContext) -> list[str]:
        layers = list(ctx.params["fp32_layers"])
        for layer in layers:
            if not layer or "," in layer or layer != layer.strip():
                raise ctx.loaded.error(f"layer name {layer!r} cannot be passed in -fpfwd_outputs (a comma-separated "
                                       "list: no commas, no leading or trailing spaces)", ("int8", "fp32_layers"))
        return layers

    @staticmethod
    def fp32_bmodels(ctx: StageContext) -> dict[str, Path]:
        return {f"{b}b": ctx.out_dir / fp32_folder(b) / "compilation.bmodel" for b in ctx.params["batch_sizes"]}

    @staticmethod
    def int8_bmodels(ctx: StageContext) -> dict[str, Path]:
        bmodels = {f"{b}b": ctx.out_dir / int8_folder(b) / "compilation.bmodel" for b in ctx.params["batch_sizes"]}
        if len(bmodels) > 1:
            bmodels[COMBINED_LABEL] = ctx.out_dir / COMBINED
        return bmodels

    # --- steps (paths as published in a dry run; a real run writes into a temp folder) ----------
    def steps(self, stage: str, ctx: StageContext) -> list[Step]:
        return {StageName.COMPILE_FP32.value: self.fp32_steps, StageName.CALIBRATE.value: self.calibrate_steps,
                StageName.QUANTIZE.value: self.quantize_steps,
                StageName.COMPILE_INT8.value: self.int8_steps}[stage](ctx)

    def fp32_steps(self, ctx: StageContext) -> list[Step]:
        """bmnetp per batch size, the model calibrate uses kept beside the bmodels, their `--info`."""
        from bmbuild.artifacts import source_model

        kept = ctx.out_dir / f"{ctx.recipe.name}{front_end(ctx)[2]}"
        keep = InProcess("bmbuild.steps:copy_file", {"source": source_model(ctx), "target": kept}, (kept,),
                         says=f"copy {quote(str(source_model(ctx)))} -> {quote(str(kept))} (the model calibrate uses)")
        return [*self.fp32_commands(ctx), keep, *info_steps(ctx, self.fp32_bmodels(ctx), info_command)]

    def calibrate_steps(self, ctx: StageContext) -> list[Step]:
        """LMDB, fp32 umodel, calibration_use_pb; its three files moved into the stage's output."""
        commands = self.calibrate_commands(ctx)
        produced = list(commands[-1].outputs)
        moved = ", ".join(quote(path.name) for path in produced)
        return [*commands, InProcess(f"{MODULE}:keep_calibration", {"files": produced, "folder": ctx.out_dir},
                                     tuple(ctx.out_dir / path.name for path in produced),
                                     says=f"move {moved} -> {quote(str(ctx.out_dir))}")]

    def quantize_steps(self, ctx: StageContext) -> list[Step]:
        """No command: calibration_use_pb's int8 umodel and deploy prototxt are bmnetu's input."""
        source = ctx.inputs.get(StageName.CALIBRATE.value, ctx.out_dir)
        files = list(self.outputs(ctx)[:2])
        return [InProcess(f"{MODULE}:keep_int8_umodel", {"source": source, "files": files, "folder": ctx.out_dir},
                          tuple(ctx.out_dir / name for name in files),
                          says=f"copy {', '.join(map(quote, files))} from {quote(str(source))} -> "
                               f"{quote(str(ctx.out_dir))}")]

    def int8_steps(self, ctx: StageContext) -> list[Step]:
        """bmnetu per batch size (+ tpu_model --combine), their `--info`."""
        steps: list[Step] = [*self.int8_commands(ctx), *info_steps(ctx, self.int8_bmodels(ctx), info_command)]
        if ctx.params["cmp"] or ctx.recipe.eval:
            steps.append(InProcess(f"{MODULE}:int8_checks_note",
                                   says="int8 vs fp32 metrics and eval need the model run on a Sophon device "
                                        "(bmrt_test): bmnetu compares layer by layer (-cmp)"))
        return steps


MODULE = "bmbuild.toolchains.nntc"


def info_command(bmodel: Path, output_file: Path) -> Command:
    return Command("tpu_model", ("tpu_model", "--info", str(bmodel)), output_file.parent, output_file=output_file)


def keep_calibration(ctx: StageContext, files: list[Path], folder: Path) -> None:
    """calibration_use_pb's files moved into the stage's output, and what it did in the metrics."""
    for path in files:
        shutil.move(str(path), str(folder / path.name))
    toolchain = NntcToolchain()
    deploy = parse_prototxt(folder / toolchain.outputs(ctx)[1])
    params = ctx.params
    th_method = toolchain._th_method(ctx)
    ctx.metrics.update({"method": params["method"], "th_method": th_method, "samples": params["samples"],
                        "iterations": params["samples"], "fp32_layers": toolchain._fp32_layers(ctx),
                        "tensors": len(deploy["tops"])})
    ctx.log.info(f"calibrated {params['samples']} samples with -th_method={th_method}: "
                 f"{', '.join(path.name for path in files)}")


def keep_int8_umodel(ctx: StageContext, source: Path, files: list[str], folder: Path) -> None:
    """The int8 umodel and its deploy prototxt from calibrate, and what is int8 in the metrics."""
    for file_name in files:
        if not (source / file_name).is_file():
            raise ToolchainError(f"calibrate's output {source / file_name} is missing")
        shutil.copyfile(source / file_name, folder / file_name)
    deploy = parse_prototxt(folder / files[1])
    fp32_layers = list(ctx.params["fp32_layers"])
    quantized = [layer for layer in deploy["layers"]
                 if layer["type"] != "Input" and not set(layer["tops"]) <= set(fp32_layers)]
    ctx.metrics.update({"quantized_nodes": len(quantized), "fp32_layers": fp32_layers, "files": list(files)})
    ctx.log.info(f"int8 umodel: {len(quantized)} layer(s) int8, kept in float: {fp32_layers or 'none'}")


def int8_checks_note(ctx: StageContext) -> None:
    if ctx.params["cmp"]:
        ctx.log.info("int8 vs fp32: compared layer by layer by bmnetu (-cmp=True); bmbuild's similarity "
                     "metrics need the model run on a Sophon device (bmrt_test)")
    if ctx.recipe.eval:
        ctx.log.info("eval skipped: an int8 bmodel runs only on a Sophon device (bmrt_test)")


def parse_prototxt(path: Path) -> dict[str, Any]:
    """Layers (name, type, tops) of a Caffe-style text prototxt, for the stage summaries."""
    import re

    text = path.read_text(encoding="utf-8", errors="replace")
    layers = []
    for block in re.split(r"^\s*layer\s*\{", text, flags=re.MULTILINE)[1:]:
        kind = re.search(r'^\s*type:\s*"([^"]*)"', block, re.MULTILINE)
        name = re.search(r'^\s*name:\s*"([^"]*)"', block, re.MULTILINE)
        layers.append({"name": name.group(1) if name else "", "type": kind.group(1) if kind else "",
                       "tops": re.findall(r'^\s*top:\s*"([^"]*)"', block, re.MULTILINE)})
    return {"layers": layers, "tops": sorted({top for layer in layers for top in layer["tops"]})}
