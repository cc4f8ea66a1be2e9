"""The reference toolchain: the vendor's stages done for real with ONNX and onnxruntime on CPU.

compile_fp32 exports the PyTorch model to ONNX from its eager module (built from source as the
trace stage builds it: the TorchScript exporter fails on traced attention layers), checks it,
writes an onnxruntime-optimised deployable model at the recipe's `opt` level (only when it differs
from the export: each distinct file is stored once) and compares it with torch on seeded inputs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from bmbuild.commands import quote
from bmbuild.compare import Similarity, similarity, worst
from bmbuild.errors import StageFailed
from bmbuild.modelsource import TORCH_LOCK
from bmbuild.pipeline import StageName
from bmbuild.stagecontext import StageContext
from bmbuild.steps import InProcess, Step
from bmbuild.toolchains.base import Availability, package_version

MODULE = "bmbuild.toolchains.reference"

PACKAGES = ("torch", "onnx", "onnxruntime")
# Bump when this toolchain's code changes what it produces: it is part of every action key.
IMPLEMENTATION_VERSION = "3"  # 3: eager export, batch axes, the deployable stored once
# bmnetp --opt 0/1/2 mapped onto onnxruntime graph optimisation levels.
ORT_LEVELS = {0: "ORT_DISABLE_ALL", 1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED"}


def ort_session(path: Path | bytes, opt: int = 0, save_to: Path | None = None, disabled_optimizers: tuple[str, ...] = (),
                threads: int = 0) -> Any:
    """An onnxruntime CPU session at a bmnetp-style optimisation level (minus `disabled_optimizers`).

    QDQ pairs are never fused into onnxruntime's x86 int8 kernels: without VNNI those saturate
    (u8 x s8 pairs overflow int16) and stop modelling BM1684's symmetric int8 arithmetic. On
    the digits CNN, fused kernels gave cosine 0.736 against fp32 where exact QDQ gives 0.9998.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[opt])
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.log_severity_level = 3
    if threads:  # many small sessions run one after another: no thread pools spinning between runs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = threads or int(os.environ.get("BMBUILD_THREADS", "0"))  # set in -j worker processes
    if threads:
        options.intra_op_num_threads = threads
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        path = _initializers_not_inputs(path)
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers) or None)


def _initializers_not_inputs(path: Path | bytes) -> Path | bytes:
    """A model of IR version < 4 (ONNX 1.0-1.2: every initializer is also a graph input) as IR 4
    without those inputs; others as they are. onnxruntime saves such a model, optimised, with the
    inputs of the initializers it folded away still declared and now required (the ONNX zoo's
    Caffe2 AlexNet: 'Required inputs (['conv4_b_0__SHAPE', ...]) are missing')."""
    import onnx

    from bmbuild.fileinfo import onnx_versions

    if not isinstance(path, bytes) and onnx_versions(Path(path))[0] >= 4:
        return path  # (the usual case: read from the model's first bytes, not parsed whole)
    model = onnx.load_from_string(path) if isinstance(path, bytes) else onnx.load(str(path), load_external_data=False)
    if model.ir_version >= 4:
        return path
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = 4
    if not isinstance(path, bytes):
        onnx.load_external_data_for_model(model, str(Path(path).parent))
    return model.SerializeToString()


def run_session(session: Any, arrays: list[Any]) -> list[Any]:
    feeds = {inp.name: arr for inp, arr in zip(session.get_inputs(), arrays)}
    return session.run(None, feeds)


def onnx_names(recipe: Any) -> list[str]:
    return [spec.name for spec in recipe.input_specs]


def deployable_fp32(folder: Path, name: str) -> Path:
    """compile_fp32's deployable model in `folder`: `<name>.fp32.onnx`, or `<name>.onnx` when
    onnxruntime's optimised model was the same file (then stored once)."""
    optimised = folder / f"{name}.fp32.onnx"
    return optimised if optimised.is_file() else folder / f"{name}.onnx"


def same_graph(a: Path, b: Path) -> bool:
    """Whether two ONNX files hold the same graph at the same opset. onnxruntime's optimised model of
    an already optimal graph differs only in the opset domains it declares (com.microsoft, ...)."""
    import onnx

    first, second = onnx.load(str(a)), onnx.load(str(b))
    opsets = [{o.domain: o.version for o in m.opset_import}.get("", 0) for m in (first, second)]
    return opsets[0] == opsets[1] and first.graph.SerializeToString() == second.graph.SerializeToString()


def export_onnx(ctx: StageContext, target: Path) -> None:
    """The recipe's model as ONNX at `target`: an ONNX source copied, a PyTorch model exported from
    its eager module (built from source like the trace stage builds it), a TorchScript file exported
    as it is. The legacy (TorchScript) exporter at the recipe's opset: tpu-mlir rejects the dynamo
    exporter's opset 18."""
    from bmbuild.artifacts import source_model

    if ctx.recipe.source.framework == "onnx":
        shutil.copyfile(source_model(ctx), target)
        upgrade_old_opset(ctx, target)
    else:
        _export(ctx, target)


OLDEST_OPSET = 7      # onnxruntime has no kernels for older operator versions
UPGRADED_OPSET = 13   # where onnx's version converter takes an older model
UPGRADED_IR = 7       # the IR version of opset 13


def upgrade_old_opset(ctx: StageContext, model: Path) -> None:
    """An ONNX model older than opset 7 (ONNX 1.0/1.1 exports) converted in place to opset 13 by
    onnx's version converter: onnxruntime runs none of its ops ('Could not find an implementation
    for AveragePool(1)'), tpu-mlir expects current ones."""
    from bmbuild.fileinfo import onnx_versions

    opset = onnx_versions(model)[1]
    if opset is None or opset >= OLDEST_OPSET:
        return
    import onnx
    from onnx import version_converter

    loaded = onnx.load(str(model))
    try:
        converted = version_converter.convert_version(loaded, UPGRADED_OPSET)
    except Exception as exc:  # the converter lacks an adapter for one of its ops
        raise StageFailed(f"the ONNX model is opset {opset}, older than onnxruntime runs ({OLDEST_OPSET}), and onnx's "
                          f"version converter cannot bring it to {UPGRADED_OPSET}: {type(exc).__name__}: {exc}") from None
    # opset 13 came with IR version 7; an IR 3 model's new initializers (Pad's pads) would fail the
    # checker's "in initializer but not in graph input" of IR < 4
    converted.ir_version = max(converted.ir_version, UPGRADED_IR)
    onnx.save(converted, str(model))
    ctx.log.info(f"converted the model from opset {opset} to {UPGRADED_OPSET} (onnxruntime runs opset "
                 f"{OLDEST_OPSET} and later)")


def onnx_steps(ctx: StageContext, target: Path) -> list[InProcess]:
    """`<name>.onnx` at `target`: exported (`export_onnx`), checked, cut at the recipe's output_names.
    Every toolchain that starts from ONNX takes these steps; the int8 stages calibrate and quantize
    this file."""
    path = quote(str(target))
    steps = [InProcess(f"{MODULE}:export_onnx", {"target": target}, (target,), says=export_says(ctx, path)),
             InProcess(f"{MODULE}:check_onnx", {"model": target}, says=f"onnx.checker.check_model({path}, full_check=True)")]
    names = ctx.recipe.output_names
    if names:
        steps.append(InProcess(f"{MODULE}:cut_at_output_names", {"model": target, "names": list(names)}, (target,),
                               says=f"onnx.utils.extract_model({path}, outputs {','.join(names)}) -> {path}"))
    return steps


def check_onnx(ctx: StageContext, model: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(model), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and shape-inference errors
        raise StageFailed(f"onnx.checker rejected {model.name}: {exc}") from None


def cut_at_output_names(ctx: StageContext, model: Path, names: list[str]) -> None:
    cut_outputs(model, names)
    ctx.log.info(f"cut the graph at output_names {names}")


def cut_outputs(model: Path, names: list[str]) -> None:
    """`model` ended at tensors `names` (the recipe's output_names), in that order, and without what
    they do not need (onnx.utils.extract_model, as tpu-mlir's --output_names); a name the graph does not
    have is the user's mistake, named with the closest ones."""
    import difflib

    import onnx
    from onnx.utils import extract_model

    graph = onnx.load(str(model))
    weights = {init.name for init in graph.graph.initializer}
    inputs = [value.name for value in graph.graph.input if value.name not in weights]
    tensors = inputs + [output for node in graph.graph.node for output in node.output if output]
    for name in names:
        if name not in tensors:
            close = difflib.get_close_matches(name, tensors, n=3, cutoff=0.5)
            raise StageFailed(f"output_names: the ONNX model has no tensor {name!r}"
                              + (f" (did you mean {', '.join(close)}?)" if close else
                                 f" (its outputs: {', '.join(o.name for o in graph.graph.output)})"))
    cut = model.with_suffix(".cut.onnx")
    try:  # with onnx's shape inference, which types the new outputs
        extract_model(str(model), str(cut), inputs, list(names), check_model=False)
    except Exception as exc:  # onnx's shape inference or extraction refusing the graph
        raise StageFailed(f"cannot cut the ONNX model at output_names {names}: {exc}") from None
    os.replace(cut, model)


def _export(ctx: StageContext, target: Path) -> None:
    import torch

    from bmbuild.stagelog import output_to_log
    from bmbuild.artifacts import source_model
    from bmbuild.torchmodel import build_model, example_inputs, run_torch

    recipe, params = ctx.recipe, ctx.params
    with TORCH_LOCK:
        if recipe.source.framework == "pytorch":
            module = build_model(ctx)
        else:
            module = torch.jit.load(str(source_model(ctx)), map_location="cpu")
        first = recipe.resolved_batch_sizes[0]
        arrays = example_inputs(recipe, first, seed=0)
        results = run_torch(module, arrays)
        inputs = onnx_names(recipe)
        outputs = ["output"] if len(results) == 1 else [f"output{i}" for i in range(len(results))]
        dynamic = params["dyn"] or len(params["batch_sizes"]) > 1
        axes = None
        if dynamic:
            other = run_torch(module, example_inputs(recipe, first + 1, seed=0))
            axes = dynamic_axes(recipe, dict(zip(outputs, batch_axes_of(results, other))))
        ctx.log.info(f"exporting to ONNX opset {params['opset']} ({'dynamic' if dynamic else 'static'} batch"
                     f"{f': {axes}' if axes else ''})")
        try:
            with output_to_log(ctx.log):  # the exporter prints its Torch IR graph on failure
                torch.onnx.export(module, tuple(torch.from_numpy(a) for a in arrays), str(target),
                                  dynamo=False, opset_version=params["opset"], input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
        except Exception as exc:  # exporter errors are about the user's model
            text = f"{type(exc).__name__}: {exc}"
            ctx.log.info(f"ONNX export failed (opset {params['opset']}):\n{text}")
            raise ExportFailed(f"ONNX export failed: {headline(text)} (the exporter's output is in the log)") from None


def export_says(ctx: StageContext, target: str) -> str:
    """What `export_onnx` does, for its step (`target` already quoted)."""
    from bmbuild.artifacts import source_model

    recipe, params = ctx.recipe, ctx.params
    if recipe.source.framework == "onnx":
        return f"copy {quote(str(source_model(ctx)))} -> {target}"
    dynamic = "dynamic" if params["dyn"] or len(params["batch_sizes"]) > 1 else "static"
    module = (f"{recipe.source.model} (eager, built from source)" if recipe.source.framework == "pytorch"
              else quote(str(source_model(ctx))))
    return f"torch.onnx.export({module}, opset {params['opset']}, {dynamic} batch) -> {target}"


def random_integers_hint(recipe: Any) -> str:
    """What to do when a model fails on the seeded inputs and some of them are integers drawn at
    random: indices, shapes or lengths want the model's own values (ONNX's Gather, Expand)."""
    named = [f"inputs[{i}] {spec.name!r}" for i, spec in enumerate(recipe.input_specs)
             if spec.value is None and not spec.dtype.startswith("float")]
    if not named:
        return ""
    return (f"the comparison fed {', '.join(named)} seeded random integers 0..9; if such an input holds indices, "
            "a shape or a length, give the value the model expects in the recipe (inputs[i].value)")


def compare_fp32(ctx: StageContext, source: Path, exported: Path, sessions: dict[int, Any]) -> None:
    """The compiled model (`sessions`: batch size -> a session running it) against the source on
    seeded inputs; the worst similarity per batch size and output goes to `ctx.metrics["cmp"]`.
    A model cut at output_names is compared with the ONNX model's tensors of those names
    (onnxruntime, unoptimised): torch cannot return inner tensors by name."""
    from bmbuild.torchmodel import example_inputs, run_torch

    recipe, params = ctx.recipe, ctx.params
    if recipe.source.framework == "onnx" or recipe.output_names:  # torch cannot give inner tensors by name
        reference_session = ort_session(exported, 0)
        reference = lambda arrays: run_session(reference_session, arrays)  # noqa: E731
    else:
        import torch

        module = torch.jit.load(str(source), map_location="cpu")
        reference = lambda arrays: run_torch(module, arrays)  # noqa: E731
    results: dict[str, Any] = {}
    for batch, session in sessions.items():
        names = [o.name for o in session.get_outputs()]
        per_output: dict[str, list[Similarity]] = {name: [] for name in names}
        for sample in range(params["cmp_samples"]):
            arrays = example_inputs(recipe, batch, seed=params["seed"] * 1000 + sample + 1)
            try:
                expected, actual = reference(arrays), run_session(session, arrays)
            except Exception as exc:
                hint = random_integers_hint(recipe)
                if not hint:
                    raise
                raise StageFailed(f"{type(exc).__name__}: {exc}\n{hint}") from exc
            for name, ref, test in zip(names, expected, actual):
                per_output[name].append(similarity(ref, test))
        for name, sims in per_output.items():
            results[f"b{batch}/{name}"] = worst(sims).to_json()
    ctx.metrics["cmp"] = results
    for label, values in results.items():
        ctx.log.info(f"cmp {label}: {Similarity(**values)}")


class ExportFailed(StageFailed):
    """The exporter refused the model: its message's first line on the console, the rest (its
    Torch IR dump) in the stage's log only, not in a console tail."""

    shows_log_tail = False


def headline(text: str, limit: int = 300) -> str:
    """The first line of an exporter's message (it goes on with hundreds of lines of Torch IR)."""
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[:limit - 3] + "..."


def batch_axes_of(first: list[Any], second: list[Any]) -> list[list[int]]:
    """Per output, the axes whose size changed between two batch sizes: its batch axes."""
    return [[axis for axis, (a, b) in enumerate(zip(x.shape, y.shape)) if a != b] if x.ndim == y.ndim else []
            for x, y in zip(first, second)]


def dynamic_axes(recipe: Any, outputs: dict[str, list[int]]) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes: each input's batch axis and each output's, named 'batch'."""
    axes = {spec.name: {spec.batch_axis: "batch"} for spec in recipe.input_specs if spec.batch_axis is not None}
    axes.update({name: {axis: "batch" for axis in found} for name, found in outputs.items() if found})
    return axes


class ReferenceToolchain:
    """ONNX + onnxruntime: runs everywhere, and is how the pipeline is tested."""

    name = "reference"
    # the stage parameters beyond the common ones that this toolchain reads (the key holds only these)
    consumes = {
        StageName.COMPILE_FP32.value: ("opt", "dyn", "cmp", "opset", "cmp_samples", "seed"),
        # BM1684X: asymmetric tensors get tpu-mlir's range; asymmetric auto: calibrate chooses the mode
        StageName.CALIBRATE.value: ("bins", "target", "asymmetric"),
        # the target decides which ops run int8
        StageName.QUANTIZE.value: ("target", "per_channel", "fp32_layers", "asymmetric"),
        StageName.COMPILE_INT8.value: ("opt", "dyn", "cmp", "cmp_samples"),
    }
    optional_keys = frozenset({"output_names", "int8.asymmetric"})

    def availability(self) -> Availability:
        missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
        version = f"onnxruntime {package_version('onnxruntime')}"
        if missing:
            return Availability(False, version, f"python packages missing: {', '.join(missing)} "
                                "(install the reference toolchain with `pip install 'bmbuild[reference]'`)")
        return Availability(True, version)

    def versions(self) -> dict[str, str]:
        return {"implementation": IMPLEMENTATION_VERSION, **{name: package_version(name) for name in PACKAGES}}

    def steps(self, stage: str, ctx: StageContext) -> list[Step]:
        """Every stage runs in-process (no vendor command)."""
        return {StageName.COMPILE_FP32.value: fp32_steps, StageName.CALIBRATE.value: calibrate_steps,
                StageName.QUANTIZE.value: quantize_steps, StageName.COMPILE_INT8.value: int8_steps}[stage](ctx)


# --- compile_fp32 -----------------------------------------------------------------------------
def fp32_steps(ctx: StageContext) -> list[Step]:
    """Export, then onnxruntime's optimised model at the recipe's `opt` level, then the comparison."""
    from bmbuild.artifacts import source_model

    recipe, params, out = ctx.recipe, ctx.params, ctx.out_dir
    exported, deployable = out / f"{recipe.name}.onnx", out / f"{recipe.name}.fp32.onnx"
    steps: list[Step] = [*onnx_steps(ctx, exported), InProcess(
        f"{MODULE}:optimise", {"model": exported, "target": deployable, "opt": params["opt"]},
        says=f"onnxruntime {ORT_LEVELS[params['opt']]} -> {quote(str(deployable))} "
             f"(kept only when it differs from {exported.name})")]
    if params["cmp"]:
        steps.append(InProcess(
            f"{MODULE}:compare_deployable", {"source": source_model(ctx), "exported": exported},
            says=f"cmp source vs onnxruntime on {params['cmp_samples']} seeded input(s) "
                 f"per batch size {params['batch_sizes']}"))
    return steps


def optimise(ctx: StageContext, model: Path, target: Path, opt: int) -> None:
    """onnxruntime's optimised `model` at `target`, removed again when it is the same graph (the
    deployable model is then `model` itself, stored once)."""
    ort_session(model, opt, save_to=target)
    if same_graph(model, target):
        target.unlink()
        ctx.log.info(f"onnxruntime {ORT_LEVELS[opt]} left the model as it was: "
                     f"{model.name} is the deployable model too (stored once)")
    else:
        ctx.log.info(f"wrote {target.name} (onnxruntime {ORT_LEVELS[opt]})")


def compare_deployable(ctx: StageContext, source: Path, exported: Path) -> None:
    session = ort_session(deployable_fp32(ctx.out_dir, ctx.recipe.name), 0)
    compare_fp32(ctx, source, exported, {batch: session for batch in ctx.params["batch_sizes"]})


# --- int8 stages: the work is in bmbuild/toolchains/reference_int8.py ------------------------
INT8_MODULE = "bmbuild.toolchains.reference_int8"


def fp32_onnx(ctx: StageContext) -> Path:
    """The fp32 ONNX model compile_fp32 published: what calibrate and quantize read."""
    return ctx.inputs.get(StageName.COMPILE_FP32.value, ctx.out_dir) / f"{ctx.recipe.name}.onnx"


def calibrate_steps(ctx: StageContext) -> list[Step]:
    from bmbuild.artifacts import table_name
    from bmbuild.calib.feeds import input_feeds

    recipe, params = ctx.recipe, ctx.params
    model = fp32_onnx(ctx)
    table = ctx.out_dir / table_name(recipe)
    sources = {str(feed.source.data) for feed in input_feeds(recipe) if feed.source is not None}
    data = ", ".join(map(quote, sorted(sources))) or "?"
    return [InProcess(f"{INT8_MODULE}:calibrate", {"model": model, "table": table}, (table,),
                      says=f"histograms ({params['bins']} bins) of every float tensor of {quote(str(model))} over "
                           f"{params['samples']} samples of {data} -> {params['method']} thresholds -> "
                           f"{quote(str(table))}"),
            *choose_asymmetry_steps(ctx, model, table)]


def choose_asymmetry_steps(ctx: StageContext, model: Path, table: Path) -> list[InProcess]:
    """`int8.asymmetric: auto` (keyed only on a chip with asymmetric int8): the mode to build,
    chosen on the calibration samples (`reference_int8.choose_asymmetry`), next to the table."""
    from bmbuild.calib.asymmetry import AUTO, CHOICE_SAMPLES, choice_name

    if ctx.params.get("asymmetric") != AUTO:
        return []
    target = table.parent / choice_name(ctx.recipe.name)
    return [InProcess(f"{INT8_MODULE}:choose_asymmetry", {"model": model, "table": table,
                                                          "target": target}, (target,),
                      says=f"int8.asymmetric auto: symmetric and asymmetric int8 of {quote(str(model))} against "
                           f"fp32 on up to {CHOICE_SAMPLES} calibration samples; the closer one -> {quote(str(target))}")]


def quantize_steps(ctx: StageContext) -> list[Step]:
    from bmbuild.artifacts import table_name

    recipe, params = ctx.recipe, ctx.params
    model = fp32_onnx(ctx)
    table = ctx.inputs.get(StageName.CALIBRATE.value, ctx.out_dir) / table_name(recipe)
    target = ctx.out_dir / f"{recipe.name}.int8.onnx"
    kept = ", ".join(params["fp32_layers"]) or "none"
    return [InProcess(f"{INT8_MODULE}:quantize", {"model": model, "table": table, "target": target}, (target,),
                      says=f"QDQ int8 model of what the target runs in int8 (bmbuild.calib.qdq) from "
                           f"{quote(str(model))}, thresholds {quote(str(table))}, per_channel="
                           f"{params['per_channel']}, kept in fp32: {kept} -> {quote(str(target))}")]


def int8_steps(ctx: StageContext) -> list[Step]:
    """One onnxruntime-optimised int8 model per batch size, then int8 vs fp32 and the accuracy."""
    recipe, params = ctx.recipe, ctx.params
    umodel = ctx.inputs.get(StageName.QUANTIZE.value, ctx.out_dir) / f"{recipe.name}.int8.onnx"
    targets = {str(batch): ctx.out_dir / f"{batch}b.compilation" / f"{recipe.name}.int8.onnx"
               for batch in params["batch_sizes"]}
    steps: list[Step] = [InProcess(
        f"{INT8_MODULE}:compile_batch", {"model": umodel, "batch": int(batch), "target": target}, (target,),
        says=f"onnxruntime {ORT_LEVELS[params['opt']]} {'dynamic' if params['dyn'] else 'static'} batch {batch} "
             f"-> {quote(str(target))}") for batch, target in targets.items()]
    if params["cmp"]:
        steps.append(InProcess(f"{INT8_MODULE}:compare_compiled", {"umodel": umodel, "compiled": targets},
                               says=f"cmp int8 vs fp32 on {params['cmp_samples']} held-out samples, "
                                    "per output and per layer"))
    if recipe.eval:
        steps.append(InProcess(f"{INT8_MODULE}:evaluate_compiled", {"umodel": umodel},
                               says=f"{recipe.eval.metric} accuracy fp32 vs int8 on {quote(str(recipe.eval.data))}"))
    return steps
