"""The tpu-mlir toolchain (Sophgo's current compiler): real BM1684X and BM1684 bmodels, run on its cmodel.

    compile_fp32  in-process ONNX export of the eager module (legacy exporter, the recipe's opset) -> <name>.onnx
                  model_transform + model_deploy --quantize F32, once per batch size
                                                    -> <N>b.fp32.compilation/compilation.bmodel
                  (+ model_tool --combine of the batch sizes -> combined.bmodel)
                  fp32.cmp: model_runner (cmodel) on seeded inputs vs torch, bmbuild's own metrics
    calibrate     the recipe's calibration samples as a folder of .npz, model_transform (batch 1) and
                  run_calibration --cali_method <method>  -> <name>_cali_table
    quantize      model_deploy --quantize INT8 --not_gen_bmodel: the int8 tpu MLIR before code
                  generation (what stays float is read from it); int8.fp32_layers -> --quantize_table
    compile_int8  model_deploy --quantize INT8 once per batch size (+ combine)
                                                    -> <N>b.compilation/compilation.bmodel
                  int8.cmp / eval: the int8 bmodel on the cmodel vs fp32 (onnxruntime on the ONNX),
                  per sample; per layer: model_runner --dump_all_tensors of the top and int8 tpu MLIRs

tpu-mlir runs in its own Python 3.10 environment (bmbuild.toolchains.tpu_mlir_env). Every command
is a `Command` (in `<stage>.cmd`, printed by `--dry-run`), runs in a folder of the stage's private
work dir (model_deploy must run where the MLIR is: the MLIR names its weight file relative to the
current folder), and holds the environment's lock: model_deploy and model_runner re-point symlinks
inside the tpu_mlir package to the chip in use. Outputs that tpu-mlir renames (`output` ->
`/conv2/Conv_output_0_Conv`) are matched by position; its own `npz compare PASSED` is never used.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from bmbuild.errors import StageFailed, ToolchainError
from bmbuild.stagecontext import StageContext
from bmbuild.toolchains.base import Availability
from bmbuild.toolchains.bmodel_info import BmodelInfoError, describe, parse_info
from bmbuild.toolchains.commands import Command, quote, run_command, start_command_file
from bmbuild.toolchains.reference import cut_line, export_line
from bmbuild.toolchains.tpu_mlir_env import EnvNotFound, TpuMlirEnv, locate

# Bump when this adapter changes the commands it runs or the files it keeps: part of every key.
IMPLEMENTATION_VERSION = "5"  # 2: ONNX exported from the eager module; several inputs calibrate
# 3: quantize keeps the int8 tpu MLIR's weights (compile_int8 runs it for per-layer data)
# 4: run_calibration --part_asymmetric on BM1684X
# 5: outputs whose first axis is not the batch are compared whole (they were cut to one row)
CHIPS = {"BM1684X": "bm1684x", "BM1684": "bm1684"}
# recipe calibration.method -> run_calibration --cali_method
CALI_METHODS = {"kl": "kl", "mse": "mse", "minmax": "max", "percentile": "percentile9999"}
TPU_PERCENTILE = 99.99
COMBINED = "combined.bmodel"
COMBINED_LABEL = "combined"
BMODEL = "compilation.bmodel"
# tpu-mlir's entry points set their own PYTHONPATH; bmbuild's (another Python) must not leak into them.
TOOL_ENV = {"PYTHONPATH": ""}


def fp32_folder(batch: int) -> str:
    return f"{batch}b.fp32.compilation"


def int8_folder(batch: int) -> str:
    return f"{batch}b.compilation"


def shapes_arg(shapes: list[list[int]]) -> str:
    """model_transform --input_shapes: [[1,3,224,224]] (no spaces)."""
    return "[" + ",".join("[" + ",".join(map(str, shape)) + "]" for shape in shapes) + "]"


def letterbox_args(preprocess: Any) -> list[str]:
    """model_transform's --keep_aspect_ratio (+ --resize_dims, --pad_value, --pad_type) for a
    calibration.preprocess that letterboxes; nothing otherwise."""
    if preprocess is None or not preprocess.keep_aspect_ratio:
        return []
    args = ["--keep_aspect_ratio"]
    if preprocess.resize is not None:
        args += ["--resize_dims", ",".join(map(str, preprocess.resize))]
    return args + ["--pad_value", str(preprocess.pad_value), "--pad_type", preprocess.pad_type]


def weight_file(mlir: Path) -> str:
    """The weight file a top MLIR names (relative to the folder model_deploy runs in)."""
    found = re.search(r'module\.weight_file\s*=\s*"([^"]+)"', mlir.read_text(encoding="utf-8", errors="replace"))
    if not found:
        raise ToolchainError(f"{mlir.name} names no module.weight_file")
    return found.group(1)


def layer_names(mlir: Path) -> list[str]:
    """Names of the top MLIR's operations (their `loc("...")`), what --quantize_table refers to."""
    text = mlir.read_text(encoding="utf-8", errors="replace")
    names = re.findall(r'=\s*"top\.(?!Weight|None|Input)\w+".*?loc\((#loc\d+|"[^"]*")\)', text)
    aliases = dict(re.findall(r'^(#loc\d+)\s*=\s*loc\("([^"]*)"\)', text, re.MULTILINE))
    return [aliases.get(name, name.strip('"')) for name in names]


def precisions(tpu_mlir: Path) -> dict[str, int]:
    """How many tpu ops of the lowered MLIR produce int8 tensors and how many stay float."""
    counts = {"int8": 0, "float": 0}
    for line in tpu_mlir.read_text(encoding="utf-8", errors="replace").splitlines():
        op = re.search(r'=\s*"tpu\.(\w+)"', line)
        if not op or op.group(1) in ("Cast", "Reshape", "Weight", "None"):
            continue
        result = line.rsplit("->", 1)[-1]
        counts["int8" if re.search(r"quant\.uniform<[ui]8|x[su]?i8>", result) else "float"] += 1
    return counts


class TpuMlirToolchain:
    """model_transform, run_calibration, model_deploy, model_runner and model_tool from tpu-mlir."""

    name = "tpu-mlir"
    # the stage parameters beyond the common ones that this adapter reads (the key holds only these)
    consumes = {
        "compile_fp32": ("target", "dyn", "cmp", "opset", "cmp_samples", "seed"),
        "calibrate": ("bins", "target"),
        "quantize": ("target", "fp32_layers"),
        "compile_int8": ("target", "cmp", "cmp_samples", "cmodel_samples"),
    }

    def __init__(self) -> None:
        self._env: TpuMlirEnv | None = None
        self._problem = ""
        try:
            self._env = locate()
        except EnvNotFound as exc:
            self._problem = str(exc)

    # --- detection (cheap: locate() reads files only) -------------------------------------------
    def availability(self) -> Availability:
        if self._env is None:
            return Availability(False, "not installed", self._problem)
        env = self._env
        return Availability(True, f"tpu-mlir {env.version}{f' ({env.build})' if env.build else ''}, "
                                  f"{env.origin}: {env.bin_dir}")

    def versions(self) -> dict[str, str]:
        env = self._env
        return {"implementation": IMPLEMENTATION_VERSION, "tpu_mlir": env.version if env else "absent",
                "build": env.build if env else "absent"}

    def env(self) -> TpuMlirEnv:
        if self._env is None:
            raise ToolchainError(f"toolchain 'tpu-mlir' is not usable here: {self._problem}")
        return self._env

    def tool(self, name: str) -> str:
        """The command's path in the environment; its bare name when none is found (dry-run)."""
        return self._env.tool(name) if self._env is not None else name

    # --- checks shared by the run and --dry-run ----------------------------------------------------
    @staticmethod
    def chip(ctx: StageContext) -> str:
        target = ctx.recipe.target
        if target not in CHIPS:
            raise ctx.loaded.error(f"tpu-mlir here compiles for {', '.join(CHIPS)}, not {target}", ("target",))
        return CHIPS[target]

    @staticmethod
    def cali_method(ctx: StageContext) -> str:
        params = ctx.params
        if params["method"] == "percentile" and params["percentile"] != TPU_PERCENTILE:
            raise ctx.loaded.error(f"run_calibration supports only percentile {TPU_PERCENTILE} "
                                   f"(--cali_method percentile9999), not {params['percentile']}",
                                   ("calibration", "percentile"), hint="set percentile: 99.99")
        return CALI_METHODS[params["method"]]

    # --- command lines -------------------------------------------------------------------------------
    def _command(self, tool: str, args: list[str], cwd: Path, outputs: tuple[Path, ...] = ()) -> Command:
        return Command(tool, (self.tool(tool), *args), cwd, env=dict(TOOL_ENV), outputs=outputs)

    def transform(self, ctx: StageContext, onnx: Path, batch: int, cwd: Path, preprocess: Any = None) -> Command:
        """ONNX -> top MLIR at one batch size (shapes are fixed at transform), written in `cwd`; the
        graph ends at the recipe's output_names. `preprocess`'s letterbox settings are recorded in
        the MLIR (the calibration samples themselves are preprocessed by bmbuild)."""
        name = ctx.recipe.name
        args = ["--model_name", name, "--model_def", str(onnx),
                "--input_shapes", shapes_arg(ctx.recipe.shapes_for_batch(batch))]
        if ctx.recipe.output_names:
            args += ["--output_names", ",".join(ctx.recipe.output_names)]
        args += letterbox_args(preprocess)
        return self._command("model_transform", [*args, "--mlir", f"{name}.mlir"], cwd, (cwd / f"{name}.mlir",))

    def deploy(self, ctx: StageContext, cwd: Path, quantize: str, table: Path | None = None,
               qtable: Path | None = None, bmodel_file: bool = True) -> Command:
        """model_deploy in `cwd` (where the top MLIR and its weights are); the bmodel is written there
        (with its side files) and moved into the stage's output by the stage."""
        bmodel = cwd / BMODEL
        args = ["--mlir", f"{ctx.recipe.name}.mlir", "--quantize", quantize, "--chip", self.chip(ctx)]
        if quantize == "INT8" and ctx.params.get("asymmetric"):
            args.append("--asymmetric")
        if table is not None:
            args += ["--calibration_table", str(table)]
        if qtable is not None:
            args += ["--quantize_table", str(qtable)]
        args += ["--model", str(bmodel)]
        if not bmodel_file:
            args.append("--not_gen_bmodel")
        return self._command("model_deploy", args, cwd, (bmodel,) if bmodel_file else ())

    def combine(self, ctx: StageContext, bmodels: dict[str, Path]) -> list[Command]:
        if COMBINED_LABEL not in bmodels:
            return []
        parts = [str(path) for label, path in bmodels.items() if label != COMBINED_LABEL]
        combined = bmodels[COMBINED_LABEL]
        # tpu-mlir 1.30.2 may leave a BM1684 bmodel's kernel_module mode uninitialised, and --combine
        # then fails ("Inconsistent kernel module mode among models"); --refresh rewrites it (to 0)
        refresh = [self._command("model_tool", ["--refresh", part], ctx.work_dir) for part in parts]
        return refresh + [self._command("model_tool", ["--combine", *parts, "-o", str(combined)], ctx.work_dir,
                                        (combined,))]

    def info(self, ctx: StageContext, bmodel: Path) -> Command:
        return self._command("model_tool", ["--info", str(bmodel)], ctx.work_dir)

    def runner(self, bmodel: Path, inputs: Path, outputs: Path, dump: bool = False) -> Command:
        """model_runner on a bmodel (the cmodel) or an MLIR (tpu-mlir's interpreter), in the inputs'
        folder (where an MLIR's weight file is); `dump`: every tensor, not just the outputs."""
        return self._command("model_runner", ["--input", str(inputs), "--model", str(bmodel),
                                              "--output", str(outputs), *(["--dump_all_tensors"] if dump else [])],
                             inputs.parent, (outputs,))

    def calibration(self, ctx: StageContext, cwd: Path, dataset: Path, samples: int, table: Path) -> Command:
        params = ctx.params
        args = [f"{ctx.recipe.name}.mlir", "--dataset", str(dataset), "--input_num", str(samples),
                "--cali_method", self.cali_method(ctx)]
        if params["method"] == "kl":
            args += ["--histogram_bin_num", str(params["bins"])]
        if self.chip(ctx) == "bm1684x":
            # What the reference toolchain models on BM1684X (bmbuild.calib.targets.asymmetric_output):
            # a SiLU/GELU output read only by Conv/MatMul in int8 with a zero point. tpu-mlir 1.30.2
            # does it only when asked: `--part_asymmetric` is a store_true flag, off by default
            # (python/tools/run_calibration.py:73); kld_calibrator.py:667 calls choose_asym_op
            # (:349-362: top.SiLU/top.GELU whose next ops are all top.Conv/top.MatMul) only under it,
            # :493-510 gives those tensors their percentile min..max, :883-887 lists them under
            # `#asym_op` in the table, which model_deploy's import turns into zero points. BM1684
            # ignores the section (symmetric int8) but would still get the percentile thresholds.
            args.append("--part_asymmetric")
        return self._command("run_calibration", [*args, "-o", str(table)], cwd, (table,))

    @staticmethod
    def bmodels(ctx: StageContext, folder: Any) -> dict[str, Path]:
        found = {f"{b}b": ctx.out_dir / folder(b) / BMODEL for b in ctx.params["batch_sizes"]}
        if len(found) > 1:
            found[COMBINED_LABEL] = ctx.out_dir / COMBINED
        return found

    def fp32_commands(self, ctx: StageContext) -> list[Command]:
        onnx = ctx.out_dir / f"{ctx.recipe.name}.onnx"
        commands = []
        for batch in ctx.params["batch_sizes"]:
            cwd = ctx.work_dir / f"b{batch}"
            commands += [self.transform(ctx, onnx, batch, cwd), self.deploy(ctx, cwd, "F32")]
        return commands

    def calibrate_commands(self, ctx: StageContext) -> list[Command]:
        cwd = ctx.work_dir / "b1"
        onnx = ctx.inputs["compile_fp32"] / f"{ctx.recipe.name}.onnx"
        pre = ctx.recipe.calibration.preprocess if ctx.recipe.calibration else None
        return [self.transform(ctx, onnx, 1, cwd, pre),
                self.calibration(ctx, cwd, ctx.work_dir / "dataset", ctx.params["samples"], cwd / table_name(ctx))]

    def quantize_commands(self, ctx: StageContext) -> list[Command]:
        batch = ctx.recipe.resolved_batch_sizes[0]
        return [self.deploy(ctx, ctx.work_dir / f"b{batch}", "INT8", ctx.out_dir / table_name(ctx),
                            ctx.out_dir / qtable_name(ctx), bmodel_file=False)]

    def int8_commands(self, ctx: StageContext) -> list[Command]:
        source = ctx.inputs["quantize"]
        return [self.deploy(ctx, ctx.work_dir / f"b{batch}", "INT8", source / table_name(ctx),
                            source / qtable_name(ctx)) for batch in ctx.params["batch_sizes"]]

    # --- dry run -------------------------------------------------------------------------------------
    def commands(self, stage: str, ctx: StageContext) -> list[str]:
        """The command lines `stage` runs (paths as published; a real run works in a temp folder)."""
        name, params = ctx.recipe.name, ctx.params
        if stage == "compile_fp32":
            onnx = quote(str(ctx.out_dir / (name + '.onnx')))
            lines = [export_line(ctx, onnx), *cut_line(ctx, onnx)]
            lines += [c.shell() for c in self.fp32_commands(ctx)]
            lines += [f"[in-process] move {ctx.work_dir}/b<N>/{BMODEL} -> {ctx.out_dir}/<N>b.fp32.compilation/ "
                      "(with the top MLIR and its weights)"]
            lines += [c.shell() for c in self.combine(ctx, self.bmodels(ctx, fp32_folder))]
            lines += [self.info(ctx, p).shell() for p in self.bmodels(ctx, fp32_folder).values()]
            if params["cmp"]:
                versus = "onnxruntime" if ctx.recipe.source.framework == "onnx" or ctx.recipe.output_names else "torch"
                lines.append(f"[in-process] cmp: model_runner (cmodel) vs {versus} on {params['cmp_samples']} seeded "
                             f"input(s) per batch size {params['batch_sizes']}")
            return lines
        if stage == "calibrate":
            return [f"[in-process] write {params['samples']} calibration samples as {ctx.work_dir / 'dataset'}/*.npz",
                    *(c.shell() for c in self.calibrate_commands(ctx)),
                    f"[in-process] copy {table_name(ctx)} -> {ctx.out_dir}"]
        if stage == "quantize":
            lines = [f"[in-process] copy {table_name(ctx)} from {ctx.inputs['calibrate']}"]
            kept = ", ".join(params["fp32_layers"]) or "none"
            lines.append(f"[in-process] write {ctx.out_dir / qtable_name(ctx)} (layers kept in F32: {kept})")
            return lines + [c.shell() for c in self.quantize_commands(ctx)]
        if stage == "compile_int8":
            lines = [c.shell() for c in self.int8_commands(ctx)]
            lines += [f"[in-process] move {ctx.work_dir}/b<N>/{BMODEL} -> {ctx.out_dir}/<N>b.compilation/"]
            lines += [c.shell() for c in self.combine(ctx, self.bmodels(ctx, int8_folder))]
            lines += [self.info(ctx, p).shell() for p in self.bmodels(ctx, int8_folder).values()]
            if params["cmp"]:
                lines.append(f"[in-process] cmp: int8 bmodel (model_runner, cmodel) vs fp32 on "
                             f"{params['cmodel_samples']} held-out samples")
                batch = params["batch_sizes"][0]
                lines.append(f"[in-process] per layer: model_runner --dump_all_tensors of the top MLIR (fp32) and the "
                             f"int8 tpu MLIR (quantize) in {ctx.work_dir}/layers on {batch} held-out sample(s)")
            if ctx.recipe.eval:
                lines.append(f"[in-process] {ctx.recipe.eval.metric} accuracy: int8 bmodel on the cmodel vs fp32")
            return lines
        return []

    # --- stages --------------------------------------------------------------------------------------
    def run(self, ctx: StageContext, command: Command, capture: bool = False) -> str:
        """One tpu-mlir command, holding the environment's lock."""
        from filelock import FileLock

        lock_file = self.env().lock_file
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_file)):
            return run_command(command, ctx.log, capture=capture)

    def compile_fp32(self, ctx: StageContext) -> None:
        self.env()
        self.chip(ctx)
        start_command_file(ctx.log, f"{ctx.recipe.name} compile_fp32 (tpu-mlir): model_transform + model_deploy "
                                    "F32 per batch size")
        from bmbuild.toolchains.reference import write_onnx

        write_onnx(ctx)  # the eager module, legacy exporter at the recipe's opset (tpu-mlir rejects dynamo's 18)
        for command in self.fp32_commands(ctx):
            self.run(ctx, command)
            if command.tool == "model_deploy":
                folder = ctx.out_dir / fp32_folder(int(command.cwd.name[1:]))
                keep_top_mlir(ctx, command.cwd, folder)
                shutil.move(str(command.outputs[0]), str(folder / BMODEL))
        for command in self.combine(ctx, self.bmodels(ctx, fp32_folder)):
            self.run(ctx, command)
        ctx.metrics["bmodels"] = self.bmodel_infos(ctx, self.bmodels(ctx, fp32_folder))
        if ctx.params["cmp"]:
            from bmbuild.toolchains import tpu_mlir_run

            ctx.metrics["cmp"] = tpu_mlir_run.compare_fp32(self, ctx)

    def calibrate(self, ctx: StageContext) -> None:
        from bmbuild.toolchains import tpu_mlir_run

        self.env()
        commands = self.calibrate_commands(ctx)
        start_command_file(ctx.log, f"{ctx.recipe.name} calibrate (tpu-mlir): model_transform (batch 1) + "
                                    "run_calibration")
        samples = tpu_mlir_run.write_dataset(ctx, ctx.work_dir / "dataset")
        for command in commands:
            self.run(ctx, command)
        shutil.copyfile(commands[-1].outputs[0], ctx.out_dir / table_name(ctx))  # not its side files
        rows = [line for line in (ctx.out_dir / table_name(ctx)).read_text().splitlines()
                if line.strip() and not line.startswith("#")]
        ctx.metrics.update({"method": ctx.params["method"], "cali_method": self.cali_method(ctx),
                            "samples": samples, "tensors": len(rows)})

    def quantize(self, ctx: StageContext) -> None:
        self.env()
        start_command_file(ctx.log, f"{ctx.recipe.name} quantize (tpu-mlir): model_deploy INT8 --not_gen_bmodel "
                                    "(the int8 tpu MLIR)")
        shutil.copyfile(ctx.inputs["calibrate"] / table_name(ctx), ctx.out_dir / table_name(ctx))
        batch = ctx.recipe.resolved_batch_sizes[0]
        cwd = ctx.work_dir / f"b{batch}"
        top = copy_top_mlir(ctx, ctx.inputs["compile_fp32"] / fp32_folder(batch), cwd)
        layers = quantize_fp32_layers(ctx, layer_names(top))
        (ctx.out_dir / qtable_name(ctx)).write_text("# layers kept in float (int8.fp32_layers)\n"
                                                    + "".join(f"{layer} F32\n" for layer in layers))
        for command in self.quantize_commands(ctx):
            self.run(ctx, command)
        lowered = sorted(cwd.glob(f"{ctx.recipe.name}_{self.chip(ctx)}_int8*_tpu.mlir"))
        if not lowered:
            raise ToolchainError(f"model_deploy --not_gen_bmodel wrote no int8 tpu MLIR in {cwd}")
        target = ctx.out_dir / lowered_name(ctx, self.chip(ctx))
        shutil.copyfile(lowered[0], target)
        # its weights, under the name the MLIR gives them: compile_int8 runs it for the per-layer data
        shutil.copyfile(cwd / weight_file(lowered[0]), ctx.out_dir / weight_file(lowered[0]))
        counts = precisions(target)
        ctx.metrics.update({"quantized_nodes": counts["int8"], "float_nodes": counts["float"],
                            "fp32_layers": layers, "files": sorted(p.name for p in ctx.out_dir.iterdir())})
        ctx.log.info(f"int8 tpu MLIR: {counts['int8']} op(s) int8, {counts['float']} float; "
                     f"kept in float by the recipe: {layers or 'none'}")

    def compile_int8(self, ctx: StageContext) -> None:
        from bmbuild.toolchains import tpu_mlir_run

        self.env()
        start_command_file(ctx.log, f"{ctx.recipe.name} compile_int8 (tpu-mlir): model_deploy INT8 per batch size")
        for batch in ctx.params["batch_sizes"]:
            copy_top_mlir(ctx, ctx.inputs["compile_fp32"] / fp32_folder(batch), ctx.work_dir / f"b{batch}")
        for command in self.int8_commands(ctx):
            self.run(ctx, command)
            folder = ctx.out_dir / int8_folder(int(command.cwd.name[1:]))
            folder.mkdir()
            shutil.move(str(command.outputs[0]), str(folder / BMODEL))
        for command in self.combine(ctx, self.bmodels(ctx, int8_folder)):
            self.run(ctx, command)
        bmodels = self.bmodels(ctx, int8_folder)
        ctx.metrics["bmodels"] = self.bmodel_infos(ctx, bmodels)
        if ctx.params["cmp"]:
            ctx.metrics["cmp"] = tpu_mlir_run.compare_int8(self, ctx)
            ctx.metrics["layers"] = tpu_mlir_run.layer_similarity(self, ctx)
        if ctx.recipe.eval:
            ctx.metrics["eval"] = tpu_mlir_run.evaluate(self, ctx)

    def bmodel_infos(self, ctx: StageContext, bmodels: dict[str, Path]) -> dict[str, Any]:
        infos = {}
        for label, path in bmodels.items():
            command = self.info(ctx, path)
            text = self.run(ctx, command, capture=True)
            try:
                infos[label] = parse_info(text)
            except BmodelInfoError as exc:
                raise ToolchainError(f"model_tool --info {path.name}: {exc}", command.shell(), 0,
                                     "\n".join(text.splitlines()[-10:])) from None
            ctx.log.info(f"{label}: {describe(infos[label])}")
        return infos


# --- files between stages ------------------------------------------------------------------------
def table_name(ctx: StageContext) -> str:
    return f"{ctx.recipe.name}_cali_table"


def qtable_name(ctx: StageContext) -> str:
    return f"{ctx.recipe.name}_qtable"


def lowered_name(ctx: StageContext, chip: str) -> str:
    """The quantize stage's int8 tpu MLIR (published beside its weight file)."""
    return f"{ctx.recipe.name}_{chip}_int8_tpu.mlir"


def keep_top_mlir(ctx: StageContext, cwd: Path, folder: Path) -> None:
    """The batch size's top MLIR and its weights, beside its bmodel: later stages deploy from them."""
    mlir = cwd / f"{ctx.recipe.name}.mlir"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mlir, folder / mlir.name)
    shutil.copyfile(cwd / weight_file(mlir), folder / weight_file(mlir))


def copy_top_mlir(ctx: StageContext, folder: Path, cwd: Path) -> Path:
    """A writable copy of a published top MLIR + weights in `cwd` (model_deploy writes beside it)."""
    mlir = folder / f"{ctx.recipe.name}.mlir"
    cwd.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mlir, cwd / mlir.name)
    shutil.copyfile(folder / weight_file(mlir), cwd / weight_file(mlir))
    return cwd / mlir.name


def quantize_fp32_layers(ctx: StageContext, known: list[str] | None = None) -> list[str]:
    """int8.fp32_layers checked against the top MLIR's layer names (when known)."""
    import difflib

    layers = list(ctx.params["fp32_layers"])
    for layer in layers:
        if not layer or any(c.isspace() for c in layer):
            raise ctx.loaded.error(f"layer name {layer!r} cannot go in a --quantize_table (one name per line, "
                                   "no spaces)", ("int8", "fp32_layers"))
        if known is not None and layer not in known:
            close = [k for k in known if layer.strip("/").lower() in k.lower()]
            close = list(dict.fromkeys(close + difflib.get_close_matches(layer, known, n=3)))[:3]
            raise StageFailed(f"int8.fp32_layers: no layer named {layer!r} in the tpu-mlir model"
                              + (f" (did you mean {', '.join(close)}?)" if close
                                 else f" (its layers: {', '.join(known[:6])}{', ...' if len(known) > 6 else ''})"))
    return layers


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
