"""The tpu-mlir toolchain (Sophgo's current compiler): real BM1684X and BM1684 bmodels, run on its cmodel.

    compile_fp32  in-process ONNX export of the eager module (legacy exporter, the recipe's opset) -> <name>.onnx
                  model_transform + model_deploy --quantize F32, once per batch size
                                                    -> <N>b.fp32.compilation/compilation.bmodel
                  (+ model_tool --combine of the batch sizes -> combined.bmodel)
                  fp32.cmp: model_runner (cmodel) on seeded inputs vs torch, bmbuild's own metrics
    calibrate     the recipe's calibration samples as a folder of .npz, model_transform (batch 1) and
                  run_calibration --cali_method <method>  -> <name>_cali_table; int8.asymmetric auto
                  on BM1684X: both modes scored from that table (bmbuild.calib.asymmetry) -> the choice
    quantize      model_deploy --quantize INT8 --not_gen_bmodel: the int8 tpu MLIR before code
                  generation (what stays float is read from it); int8.fp32_layers -> --quantize_table;
                  int8.asymmetric (or calibrate's choice) -> --asymmetric, here and in compile_int8
    compile_int8  model_deploy --quantize INT8 once per batch size (+ combine)
                                                    -> <N>b.compilation/compilation.bmodel
                  int8.cmp / eval: the int8 bmodel on the cmodel vs fp32 (onnxruntime on the ONNX),
                  per sample; per layer: model_runner --dump_all_tensors of the top and int8 tpu MLIRs

tpu-mlir runs in its own Python 3.10 environment (bmbuild.toolchains.tpu_mlir_env). Every command
is a `Command` step (bmbuild.steps: in `<stage>.cmd`, printed by `--dry-run`), runs in a folder of the stage's private
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
from bmbuild.toolchains.bmodel_info import info_steps
from bmbuild.commands import Command, quote, run_command
from bmbuild.pipeline import StageName
from bmbuild.steps import InProcess, Step
from bmbuild.calib.asymmetry import AUTO, asymmetric_mode, choice_name
from bmbuild.toolchains.reference import choose_asymmetry_steps, onnx_steps
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
    """model_transform --input_shapes: [[1,3,224,224]] (no spaces). A scalar is [1]: tpu-mlir gives
    a shapeless ONNX input that shape (`OnnxConverter.input_shape_assign`) and checks the count."""
    return "[" + ",".join("[" + ",".join(map(str, shape or [1])) + "]" for shape in shapes) + "]"


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


def copy_mlir(mlir: Path, target: Path) -> None:
    """An MLIR file to `target` and, beside it, the weight file it names. A model without weights
    has none (tpu-mlir writes the file only when there are weights to hold)."""
    shutil.copyfile(mlir, target)
    weights = mlir.parent / weight_file(mlir)
    if weights.exists():
        shutil.copyfile(weights, target.parent / weights.name)


def layer_names(mlir: Path) -> list[str]:
    """Names of the top MLIR's operations (their `loc("...")`), what --quantize_table refers to."""
    text = mlir.read_text(encoding="utf-8", errors="replace")
    names = re.findall(r'=\s*"top\.(?!Weight|None|Input)\w+".*?loc\((#loc\d+|"[^"]*")\)', text)
    aliases = dict(re.findall(r'^(#loc\d+)\s*=\s*loc\("([^"]*)"\)', text, re.MULTILINE))
    return [aliases.get(name, name.strip('"')) for name in names]


MOVES = ("Reshape", "Flatten", "Permute", "Squeeze", "Unsqueeze", "Slice")  # their output is on the input's grid


def output_layer_names(mlir: Path) -> list[str]:
    """Names of the operations whose results the top MLIR's main function returns (the graph's
    outputs, as the calibration table names them: `output_Gemm` for ONNX's `output`), and back
    through ops that only move values, the ops whose int8 grid those carry."""
    text = mlir.read_text(encoding="utf-8", errors="replace")
    returned = re.findall(r"^\s*return\s+(.*?)\s*:", text, re.MULTILINE)
    if not returned:
        return []
    aliases = dict(re.findall(r'^(#loc\d+)\s*=\s*loc\("([^"]*)"\)', text, re.MULTILINE))
    names: list[str] = []
    pending = re.findall(r"%[\w.]+", returned[-1])
    while pending:
        value = pending.pop(0)
        defined = re.search(rf'^\s*{re.escape(value)}\s*=\s*"top\.(\w+)"\(([^)]*)\).*?loc\((#loc\d+|"[^"]*")\)\s*$',
                            text, re.MULTILINE)
        if not defined:
            continue
        name = aliases.get(defined.group(3), defined.group(3).strip('"'))
        if name in names:
            continue
        names.append(name)
        if defined.group(1) in MOVES:
            pending += re.findall(r"%[\w.]+", defined.group(2))[:1]
    return names


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
        StageName.COMPILE_FP32.value: ("target", "dyn", "cmp", "opset", "cmp_samples", "seed"),
        StageName.CALIBRATE.value: ("bins", "target", "asymmetric"),  # asymmetric auto: calibrate chooses
        StageName.QUANTIZE.value: ("target", "fp32_layers", "asymmetric"),
        StageName.COMPILE_INT8.value: ("target", "cmp", "cmp_samples", "cmodel_samples", "asymmetric"),
    }
    optional_keys = frozenset({"output_names", "int8.asymmetric"})
    reshapes_batch = True  # model_transform --input_shapes: a fixed-batch ONNX model compiles at any batch size

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
    def _command(self, tool: str, args: list[str], cwd: Path, outputs: tuple[Path, ...] = (),
                 output_file: Path | None = None) -> Command:
        """A tpu-mlir command, run holding the environment's lock (when the environment is here)."""
        lock = self._env.lock_file if self._env is not None else None
        return Command(tool, (self.tool(tool), *args), cwd, env=dict(TOOL_ENV), outputs=outputs, lock=lock,
                       output_file=output_file)

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
               qtable: Path | None = None, bmodel_file: bool = True, asymmetric: bool = False) -> Command:
        """model_deploy in `cwd` (where the top MLIR and its weights are); the bmodel is written there
        (with its side files) and moved into the stage's output by the stage."""
        bmodel = cwd / BMODEL
        args = ["--mlir", f"{ctx.recipe.name}.mlir", "--quantize", quantize, "--chip", self.chip(ctx)]
        if quantize == "INT8" and asymmetric:
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

    def info(self, bmodel: Path, output_file: Path) -> Command:
        return self._command("model_tool", ["--info", str(bmodel)], output_file.parent, output_file=output_file)

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

    def calibrate_commands(self, ctx: StageContext) -> list[Command]:
        cwd = ctx.work_dir / "b1"
        onnx = ctx.inputs[StageName.COMPILE_FP32] / f"{ctx.recipe.name}.onnx"
        pre = ctx.recipe.calibration.preprocess if ctx.recipe.calibration else None
        return [self.transform(ctx, onnx, 1, cwd, pre),
                self.calibration(ctx, cwd, ctx.work_dir / "dataset", ctx.params["samples"], cwd / table_name(ctx))]

    # --- steps (paths as published in a dry run; a real run works in a temp folder) -------------------
    def steps(self, stage: str, ctx: StageContext) -> list[Step]:
        self.chip(ctx)  # a target tpu-mlir cannot compile for is the recipe's error, before any step
        return {StageName.COMPILE_FP32.value: self.fp32_steps, StageName.CALIBRATE.value: self.calibrate_steps,
                StageName.QUANTIZE.value: self.quantize_steps,
                StageName.COMPILE_INT8.value: self.int8_steps}[stage](ctx)

    def fp32_steps(self, ctx: StageContext) -> list[Step]:
        """The ONNX export, model_transform + model_deploy F32 per batch size, combine, info, cmp."""
        params = ctx.params
        onnx = ctx.out_dir / f"{ctx.recipe.name}.onnx"
        steps: list[Step] = [*onnx_steps(ctx, onnx)]
        for batch in params["batch_sizes"]:
            cwd = ctx.work_dir / f"b{batch}"
            steps += [self.transform(ctx, onnx, batch, cwd), self.deploy(ctx, cwd, "F32"),
                      keep_bmodel_step(cwd, ctx.out_dir / fp32_folder(batch), top_mlir=True)]
        steps += self.compiled_steps(ctx, fp32_folder)
        if params["cmp"]:
            versus = "onnxruntime" if ctx.recipe.source.framework == "onnx" or ctx.recipe.output_names else "torch"
            steps.append(InProcess(f"{RUN_MODULE}:compare_fp32_step",
                                   says=f"cmp: model_runner (cmodel) vs {versus} on {params['cmp_samples']} seeded "
                                        f"input(s) per batch size {params['batch_sizes']}"))
        return steps

    def calibrate_steps(self, ctx: StageContext) -> list[Step]:
        """The samples as .npz, model_transform (batch 1) + run_calibration, the table kept."""
        dataset, target = ctx.work_dir / "dataset", ctx.out_dir / table_name(ctx)
        commands = self.calibrate_commands(ctx)
        return [InProcess(f"{RUN_MODULE}:write_dataset_step", {"folder": dataset},
                          says=f"write {ctx.params['samples']} calibration samples as {quote(str(dataset))}/*.npz"),
                *commands,
                InProcess(f"{MODULE}:keep_table", {"table": commands[-1].outputs[0], "target": target,
                                                   "top": commands[0].outputs[0]},
                          (target,), says=f"copy {table_name(ctx)} -> {quote(str(ctx.out_dir))} (not its side files), "
                                          "graph outputs at their |x| max"),
                *choose_asymmetry_steps(ctx, ctx.inputs[StageName.COMPILE_FP32] / f"{ctx.recipe.name}.onnx", target)]

    def quantize_steps(self, ctx: StageContext) -> list[Step]:
        """The table, the top MLIR, the quantize table, model_deploy INT8 --not_gen_bmodel, the int8 tpu MLIR kept."""
        quantize_fp32_layers(ctx)  # names that cannot go in a --quantize_table: the recipe's error
        batch = ctx.recipe.resolved_batch_sizes[0]
        cwd = ctx.work_dir / f"b{batch}"
        source = ctx.inputs.get(StageName.CALIBRATE.value, ctx.out_dir) / table_name(ctx)
        table, qtable = ctx.out_dir / table_name(ctx), ctx.out_dir / qtable_name(ctx)
        lowered = ctx.out_dir / lowered_name(ctx, self.chip(ctx))
        kept = ", ".join(ctx.params["fp32_layers"]) or "none"
        choice = [] if ctx.params.get("asymmetric") != AUTO else [InProcess(
            "bmbuild.steps:copy_file", {"source": source.parent / choice_name(ctx.recipe.name),
                                        "target": ctx.out_dir / choice_name(ctx.recipe.name)},
            (ctx.out_dir / choice_name(ctx.recipe.name),),
            says=f"copy calibrate's int8.asymmetric choice {choice_name(ctx.recipe.name)}: model_deploy gets "
                 "--asymmetric (here and in compile_int8) when it chose asymmetric")]
        return [InProcess("bmbuild.steps:copy_file", {"source": source, "target": table}, (table,),
                          says=f"copy {table_name(ctx)} from {quote(str(source.parent))}"),
                *choice,
                copy_top_mlir_step(ctx, ctx.inputs.get(StageName.COMPILE_FP32.value, ctx.out_dir) / fp32_folder(batch),
                                   cwd),
                InProcess(f"{MODULE}:write_qtable", {"top": cwd / f"{ctx.recipe.name}.mlir", "target": qtable},
                          (qtable,), says=f"write {quote(str(qtable))} (layers kept in F32: {kept})"),
                self.deploy(ctx, cwd, "INT8", table, qtable, bmodel_file=False,
                            asymmetric=asymmetric_mode(ctx.params, source.parent, ctx.recipe.name)),
                InProcess(f"{MODULE}:keep_lowered", {"cwd": cwd, "target": lowered}, (lowered,),
                          says=f"copy the int8 tpu MLIR and its weights -> {quote(str(lowered))}")]

    def int8_steps(self, ctx: StageContext) -> list[Step]:
        """model_deploy INT8 per batch size (from compile_fp32's top MLIR), combine, info, cmp, eval."""
        params = ctx.params
        source = ctx.inputs.get(StageName.QUANTIZE.value, ctx.out_dir)
        fp32 = ctx.inputs.get(StageName.COMPILE_FP32.value, ctx.out_dir)
        cwds = {batch: ctx.work_dir / f"b{batch}" for batch in params["batch_sizes"]}
        steps: list[Step] = [copy_top_mlir_step(ctx, fp32 / fp32_folder(batch), cwd) for batch, cwd in cwds.items()]
        for batch, cwd in cwds.items():
            steps += [self.deploy(ctx, cwd, "INT8", source / table_name(ctx), source / qtable_name(ctx),
                                  asymmetric=asymmetric_mode(ctx.params, source, ctx.recipe.name)),
                      keep_bmodel_step(cwd, ctx.out_dir / int8_folder(batch), top_mlir=False)]
        steps += self.compiled_steps(ctx, int8_folder)
        if params["cmp"]:
            batch = params["batch_sizes"][0]
            steps += [InProcess(f"{RUN_MODULE}:compare_int8_step",
                                says=f"cmp: int8 bmodel (model_runner, cmodel) vs fp32 on {params['cmodel_samples']} "
                                     "held-out samples"),
                      InProcess(f"{RUN_MODULE}:layer_similarity_step",
                                says="per layer: model_runner --dump_all_tensors of the top MLIR (fp32) and the int8 "
                                     f"tpu MLIR (quantize) in {quote(str(ctx.work_dir / 'layers'))} on {batch} held-out "
                                     "sample(s)")]
        if ctx.recipe.eval:
            steps.append(InProcess(f"{RUN_MODULE}:evaluate_step",
                                   says=f"{ctx.recipe.eval.metric} accuracy: int8 bmodel on the cmodel vs fp32"))
        return steps

    def compiled_steps(self, ctx: StageContext, folder: Any) -> list[Step]:
        """Refresh + combine of several batch sizes, then `model_tool --info` of every bmodel."""
        bmodels = self.bmodels(ctx, folder)
        return [*self.combine(ctx, bmodels), *info_steps(ctx, bmodels, self.info)]

    def run(self, ctx: StageContext, command: Command, capture: bool = False) -> str:
        """One tpu-mlir command run by an in-process step (model_runner on the cmodel)."""
        return run_command(command, ctx.log, capture=capture)


MODULE = "bmbuild.toolchains.tpu_mlir"
RUN_MODULE = "bmbuild.toolchains.tpu_mlir_run"


def keep_bmodel_step(cwd: Path, folder: Path, top_mlir: bool) -> InProcess:
    also = " (with the top MLIR and its weights)" if top_mlir else ""
    return InProcess(f"{MODULE}:keep_bmodel", {"cwd": cwd, "folder": folder, "top_mlir": top_mlir},
                     (folder / BMODEL,), says=f"move {quote(str(cwd / BMODEL))} -> {quote(str(folder))}/{also}")


def keep_bmodel(ctx: StageContext, cwd: Path, folder: Path, top_mlir: bool) -> None:
    """model_deploy's bmodel moved into the stage's output (with the top MLIR: later stages deploy from it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if top_mlir:
        keep_top_mlir(ctx, cwd, folder)
    shutil.move(str(cwd / BMODEL), str(folder / BMODEL))


def copy_top_mlir_step(ctx: StageContext, folder: Path, cwd: Path) -> InProcess:
    mlir = f"{ctx.recipe.name}.mlir"
    return InProcess(f"{MODULE}:copy_top_mlir_into", {"folder": folder, "cwd": cwd}, (cwd / mlir,),
                     says=f"copy {quote(str(folder / mlir))} and its weights -> {quote(str(cwd))}")


def copy_top_mlir_into(ctx: StageContext, folder: Path, cwd: Path) -> None:
    copy_top_mlir(ctx, folder, cwd)


def keep_table(ctx: StageContext, table: Path, target: Path, top: Path) -> None:
    """run_calibration's table (not its side files) in the stage's output, its size in the metrics;
    the graph outputs' thresholds raised to their |x| max, as the reference toolchain does
    (`bmbuild.calib.table.outputs_unclipped`: tpu-mlir's tuner never revisits an output)."""
    from bmbuild.calib.table import unclip_outputs_in_text

    text, raised = unclip_outputs_in_text(table.read_text(), output_layer_names(top))
    if raised:
        ctx.log.info(f"graph outputs kept at their |x| max (a clipped output reaches the user clipped): "
                     f"{', '.join(raised)}")
    target.write_text(text)
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    ctx.metrics.update({"method": ctx.params["method"], "cali_method": TpuMlirToolchain.cali_method(ctx),
                        "tensors": len(rows)})


def write_qtable(ctx: StageContext, top: Path, target: Path) -> None:
    """The --quantize_table: int8.fp32_layers, checked against the top MLIR's layer names."""
    layers = quantize_fp32_layers(ctx, layer_names(top))
    target.write_text("# layers kept in float (int8.fp32_layers)\n" + "".join(f"{layer} F32\n" for layer in layers))
    ctx.metrics["fp32_layers"] = layers


def keep_lowered(ctx: StageContext, cwd: Path, target: Path) -> None:
    """The int8 tpu MLIR model_deploy --not_gen_bmodel wrote, with its weights (compile_int8 runs it
    for the per-layer data), and how many of its ops are int8."""
    lowered = sorted(cwd.glob(f"{ctx.recipe.name}_{TpuMlirToolchain.chip(ctx)}_int8*_tpu.mlir"))
    if not lowered:
        raise ToolchainError(f"model_deploy --not_gen_bmodel wrote no int8 tpu MLIR in {cwd}")
    copy_mlir(lowered[0], target)
    counts = precisions(target)
    layers = ctx.metrics.get("fp32_layers", [])
    ctx.metrics.update({"quantized_nodes": counts["int8"], "float_nodes": counts["float"],
                        "fp32_layers": layers, "asymmetric": "_int8_asym_" in lowered[0].name,  # tpu-mlir's own name
                        "files": sorted(p.name for p in target.parent.iterdir())})
    ctx.log.info(f"int8 tpu MLIR: {counts['int8']} op(s) int8, {counts['float']} float; "
                 f"kept in float by the recipe: {layers or 'none'}")


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
    copy_mlir(mlir, folder / mlir.name)


def copy_top_mlir(ctx: StageContext, folder: Path, cwd: Path) -> Path:
    """A writable copy of a published top MLIR + weights in `cwd` (model_deploy writes beside it)."""
    mlir = folder / f"{ctx.recipe.name}.mlir"
    cwd.mkdir(parents=True, exist_ok=True)
    copy_mlir(mlir, cwd / mlir.name)
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
