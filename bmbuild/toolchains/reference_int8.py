"""The reference toolchain's int8 path: calibrate, quantize (QDQ ONNX), compile_int8.

All three work on the *prepared* fp32 model: the exported ONNX at opset 13 or later (per-channel
DequantizeLinear needs it) after onnxruntime's basic graph optimisations (constants folded,
BatchNorm and bias folded into convolutions: what tpu-mlir does before it quantizes).

- calibrate streams the calibration set through the prepared model with every float tensor
  exposed as an output, folding each batch into fixed-size histograms (memory does not grow
  with the number of samples), and writes a tpu-mlir calibration table. Tensors that cannot be
  calibrated (no values, NaN/inf, integer values) are named in the log and left out. With
  `int8.asymmetric: auto` on BM1684X it then chooses symmetric or asymmetric int8
  (`choose_asymmetry`, which the tpu-mlir toolchain runs on its own table too).
- quantize quantizes what the recipe's target runs in int8 and leaves the rest in float
  (`bmbuild.calib.qdq`, `bmbuild.calib.targets`): symmetric int8/uint8 activations as tpu-mlir
  (scale = threshold/127, or /255 for a tensor that is never negative), per-channel int8
  convolution weights, `fp32_layers` kept in float.
- compile_int8 writes one optimised int8 model per batch size (int8 weights stay int8) and
  compares int8 with fp32 on held-out samples: per sample (mean and worst, the same for every
  batch size), then per layer (each quantized tensor against its fp32 value).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bmbuild.calib.asymmetry import CHOICE_SAMPLES, MIN_GAIN, asymmetric_mode
from bmbuild.calib.dataset import rows_of
from bmbuild.calib.qdq import DEQUANT_SUFFIX
from bmbuild.compare import per_sample, sample_rows, similarity
from bmbuild.errors import StageFailed
from bmbuild.pipeline import StageName
from bmbuild.stagecontext import StageContext
from bmbuild.calib.feeds import input_feeds, split
from bmbuild.toolchains.reference import ORT_LEVELS, deployable_fp32, ort_session, run_session

CALIBRATION_BATCH = 8


def fp32_model(ctx: StageContext) -> Path:
    return ctx.inputs[StageName.COMPILE_FP32] / f"{ctx.recipe.name}.onnx"


def int8_umodel_name(ctx: StageContext) -> str:
    return f"{ctx.recipe.name}.int8.onnx"


PREPARED_OPSET = 13
KEEP_STRUCTURE = ("MatMulAddFusion", "TransposeOptimizer")


def prepared_model(ctx: StageContext, fp32: Path | None = None) -> Path:
    """The fp32 model that calibration and quantization share (see the module docstring), made from
    `fp32` (compile_fp32's `<name>.onnx` by default) in the stage's work dir: deterministic, so both
    stages see the same tensor names."""
    import onnx

    from bmbuild.calib.controlflow import inline_constant_ifs
    from bmbuild.calib.dataset import constant

    target = ctx.work_dir / "prepared.onnx"
    if target.exists():
        return target
    source = fp32 or fp32_model(ctx)
    model = onnx.load(str(source))
    inlined = inline_constant_ifs(model, {feed.name: constant(feed, 1) for feed in input_feeds(ctx.recipe)
                                          if feed.value is not None})
    if inlined:
        source = ctx.work_dir / "inlined.onnx"
        onnx.save(model, str(source))
        ctx.log.info(f"inlined the branch the recipe's constant inputs choose of {', '.join(inlined)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PREPARED_OPSET)
    if opset < PREPARED_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, PREPARED_OPSET)
            source = ctx.work_dir / "opset13.onnx"
            onnx.save(model, str(source))
            ctx.log.info(f"converted the model from opset {opset} to {PREPARED_OPSET} for per-channel weights")
        except Exception as exc:  # the converter lacks an adapter: weights fall back to per tensor
            ctx.log.info(f"warning: cannot convert opset {opset} to {PREPARED_OPSET} ({type(exc).__name__}: {exc}); "
                            "weights are quantized per tensor")
    # the graph keeps the exporter's structure, which is what tpu-mlir sees: MatMulAddFusion
    # would make a 3-D MatMul + bias a Gemm between Reshapes (BM1684 runs the first in float and
    # the second in int8), TransposeOptimizer moves Transposes into a LayerNorm's pieces
    ort_session(source, 1, save_to=target, disabled_optimizers=KEEP_STRUCTURE)
    return target


def float_tensors(model: Any) -> list[str]:
    """Names of every float tensor computed by the graph, plus float graph inputs."""
    from bmbuild.calib.qdq import GraphView

    graph = GraphView.of(model)
    initializers = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers and i.name in graph.float_tensors]
    for node in model.graph.node:
        names += [o for o in node.output if o and o in graph.float_tensors and o not in graph.constants]
    return list(dict.fromkeys(names))


def expose_tensors(model_path: Path, names: list[str], target: Path) -> list[str]:
    """A copy of the model whose graph outputs include `names` (for reading intermediates)."""
    import onnx

    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    onnx.save(model, str(target))
    return [o.name for o in model.graph.output]


def batches(ctx: StageContext, refs: list[Any], batch_size: int) -> Iterator[list[np.ndarray]]:
    """Every input's array for `batch_size` samples at a time (see calib.dataset.iter_feeds)."""
    from bmbuild.calib.dataset import iter_feeds

    yield from iter_feeds(refs, input_feeds(ctx.recipe), batch_size)


def fixed_batch(session: Any, feeds: list[Any]) -> int | None:
    """The batch size a session's batched inputs are fixed to, or None when it is dynamic.

    A recipe with one batch size exports a static-batch model: it takes exactly that many
    samples per run, whatever batch size calibration or evaluation would like to use. A model
    with no batch axis at all takes one sample per run.
    """
    for arg, feed in zip(session.get_inputs(), feeds):
        if feed.batch_axis is not None:
            dim = arg.shape[feed.batch_axis] if len(arg.shape) > feed.batch_axis else None
            return dim if isinstance(dim, int) and dim > 0 else None
    return 1


def chunk_size(session: Any, feeds: list[Any], default: int) -> int:
    """Samples per run: the model's fixed batch size, else `default`; 1 when a data input has no
    batch axis (each sample then has its own value of it)."""
    from bmbuild.calib.dataset import max_rows

    return max_rows(feeds) or fixed_batch(session, feeds) or default


def run_rows(session: Any, chunk: list[np.ndarray], feeds: list[Any]) -> list[np.ndarray]:
    """Run one batch of inputs (at most the fixed batch size of samples); a short batch is padded
    with copies of its first sample and outputs whose leading dimension is the padded batch are
    cut back."""
    from bmbuild.calib.dataset import pad_rows

    size = fixed_batch(session, feeds)
    rows = rows_of(chunk, feeds)
    if size is None or rows == size:
        return run_session(session, chunk)
    if rows > size:
        raise ValueError(f"{rows} samples do not fit a model with batch size {size}")
    return [v[:rows] if getattr(v, "ndim", 0) and v.shape[0] == size else v
            for v in run_session(session, pad_rows(chunk, feeds, rows, size))]


# --- calibrate ----------------------------------------------------------------------------
def calibrate(ctx: StageContext, model: Path, table: Path) -> None:
    """Statistics of every float tensor of (the prepared) `model` over the calibration samples ->
    the calibration table `table` (+ the statistics beside it)."""
    import json

    import onnx

    from bmbuild.calib.dataset import tpu_mlir_order
    from bmbuild.calib.histogram import StatsCollector
    from bmbuild.calib.methods import asymmetric_range
    from bmbuild.calib.qdq import GraphView, asymmetric_tensors, output_sources
    from bmbuild.calib.registry import method_settings
    from bmbuild.calib.table import outputs_unclipped, write_table

    params = ctx.params
    feeds = input_feeds(ctx.recipe)
    calib_refs = tpu_mlir_order(split(ctx.recipe)[0])  # the kl histogram and the tuner depend on it
    prepared = prepared_model(ctx, model)
    graph = onnx.load(str(prepared))
    tensors = float_tensors(graph)
    augmented = ctx.work_dir / "augmented.onnx"
    # graph inputs are recorded from the batch itself: exposed as outputs too, they were
    # counted twice (a doubled count in the stats file)
    graph_inputs = {i.name for i in graph.graph.input}
    outputs = expose_tensors(prepared, [t for t in tensors if t not in graph_inputs], augmented)
    session = ort_session(augmented, 0)
    collector = StatsCollector(bins=params["bins"])
    seen = 0
    input_names = [feed.name for feed in feeds]
    wanted = set(tensors) - graph_inputs
    for batch in batches(ctx, calib_refs, chunk_size(session, feeds, CALIBRATION_BATCH)):
        values = run_rows(session, batch, feeds)
        for name, array in zip(input_names, batch):
            if array.dtype.kind == "f":
                collector.update(name, array)
        for name, value in zip(outputs, values):
            if name in wanted:
                collector.update(name, value)
        seen += rows_of(batch, feeds)
        ctx.progress(seen, len(calib_refs), "calibration samples")
    ctx.log.info(f"collected statistics of {len(collector)} tensors over {seen} samples")
    rows = collector.thresholds(params["method"], **method_settings(params))
    rows = {name: rows[name] for name in dict.fromkeys(input_names + tensors) if name in rows}
    if params["method"] == "kl":  # tpu-mlir tunes kl thresholds only (ActivationCalibrator.run)
        rows = tuned_rows(ctx, graph, rows, collector, session, outputs, calib_refs)
    view = GraphView.of(graph)
    asymmetric = asymmetric_tensors(view, params["target"])
    for position, name in enumerate(rows):
        if name in asymmetric:  # tpu-mlir's range for them, whatever the method (--part_asymmetric)
            rows[name] = (rows[name][0], *asymmetric_range(collector[name], position, len(rows)))
    rows, raised = outputs_unclipped(rows, output_sources(view))
    if raised:
        ctx.log.info(f"graph outputs kept at their |x| max (a clipped output reaches the user clipped): "
                     f"{', '.join(raised)}")
    for name, reason in collector.skipped.items():
        ctx.log.info(f"warning: tensor {name!r} {reason}: not calibrated (it stays in float)")
    header = {"method": params["method"], "samples": str(seen), "net_name": ctx.recipe.name}
    if params["method"] == "percentile":
        header["percentile"] = str(params["percentile"])
    write_table(table, rows, header)
    stats = collector.to_dict()
    (table.parent / f"{ctx.recipe.name}_cali_stats.json").write_text(
        json.dumps({name: stats[name] for name in rows}, indent=1, sort_keys=True) + "\n")
    ctx.metrics.update({"method": params["method"], "samples": seen, "tensors": len(rows)})
    if collector.skipped:
        ctx.metrics["skipped"] = dict(collector.skipped)


def tuned_rows(ctx: StageContext, model: Any, rows: dict[str, tuple[float, float, float]], collector: Any,
               session: Any, outputs: list[str], calib_refs: list[Any]) -> dict[str, tuple[float, float, float]]:
    """The table after tpu-mlir's default threshold tuning (`bmbuild.calib.tune`) on the first
    calibration samples, run again through the calibration session."""
    from bmbuild.calib.qdq import GraphView
    from bmbuild.calib.tune import TUNE_NUM, tune

    feeds = input_feeds(ctx.recipe)
    refs = calib_refs[:TUNE_NUM]

    def samples() -> Iterator[dict[str, np.ndarray]]:
        for batch in batches(ctx, refs, chunk_size(session, feeds, CALIBRATION_BATCH)):
            values = dict(zip(outputs, run_rows(session, batch, feeds)))
            values.update((feed.name, array) for feed, array in zip(feeds, batch))
            yield values

    absmax = {name: collector[name].absmax for name in rows}
    thresholds, pairs, failed = tune(GraphView.of(model), rows, absmax, samples(),
                                     lambda model_bytes: ort_session(model_bytes, threads=1))
    for output, reason in failed.items():
        ctx.log.info(f"warning: threshold tuning skips the layer writing {output!r} ({reason})")
    raised = [name for name in rows if thresholds[name] > rows[name][0]]
    ctx.log.info(f"threshold tuning (tpu-mlir's SimpleTuner, {len(refs)} samples): {pairs} tensor/consumer pairs "
                 f"scored, {len(raised)} thresholds raised")
    ctx.metrics["tuned"] = len(raised)
    return {name: (thresholds[name], low, high) for name, (_, low, high) in rows.items()}


# --- int8.asymmetric: auto ------------------------------------------------------------------
def choose_asymmetry(ctx: StageContext, model: Path, table: Path, target: Path) -> None:
    """`int8.asymmetric: auto` on a chip with asymmetric int8: both modes of the int8 model (the
    reference's QDQ simulation of what the target runs, from `table`) against fp32 on the first
    calibration samples in tpu-mlir's order, per sample and output (`compare.per_sample`); the
    asymmetric mode is kept only when its mean cos is higher by more than MIN_GAIN. The model is
    scored as the target runs it (per-channel weights, before the recipe's fp32_layers: those do
    not re-run calibrate).
    Written to `target` (`bmbuild.calib.asymmetry`), which quantize and compile_int8 read."""
    import onnx

    from bmbuild.calib.asymmetry import write_choice
    from bmbuild.calib.dataset import tpu_mlir_order
    from bmbuild.calib.qdq import GraphView, apply, plan
    from bmbuild.calib.table import read_table

    prepared = prepared_model(ctx, model)
    graph_model = onnx.load(str(prepared))
    graph = GraphView.of(graph_model)
    thresholds = onnx_named(read_table(table), graph.float_tensors)
    plans = {mode: plan(graph, thresholds, ctx.params["target"], asymmetric=mode) for mode in (False, True)}
    feeds = input_feeds(ctx.recipe)
    refs = tpu_mlir_order(split(ctx.recipe)[0])[:CHOICE_SAMPLES]
    fp32 = ort_session(prepared, 0)
    sessions = {mode: ort_session(apply(graph, the_plan).SerializeToString(), 0) for mode, the_plan in plans.items()}
    pairs: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {False: [], True: []}
    for chunk in batches(ctx, refs, chunk_size(fp32, feeds, CALIBRATION_BATCH)):
        expected, rows = run_rows(fp32, chunk, feeds), rows_of(chunk, feeds)
        for mode, session in sessions.items():
            for ref, test in zip(expected, run_rows(session, chunk, feeds)):
                pairs[mode] += sample_rows(ref, test, rows)
    cos = {"symmetric": per_sample(pairs[False])["cos"], "asymmetric": per_sample(pairs[True])["cos"]}
    chosen = cos["asymmetric"] > cos["symmetric"] + MIN_GAIN
    mode = "asymmetric" if chosen else "symmetric"
    write_choice(target, chosen, "asymmetric int8 is closer to fp32 on the calibration samples" if chosen else
                 f"asymmetric int8 gains no more than {MIN_GAIN} mean cos: symmetric, the faster", cos, len(refs))
    ctx.log.info(f"int8.asymmetric auto: {mode} (mean cos vs fp32 on {len(refs)} calibration samples: symmetric "
                 f"{cos['symmetric']:.5f}, asymmetric {cos['asymmetric']:.5f})")
    ctx.metrics.update({"asymmetric": chosen, "mode_cos": cos})


def onnx_named(rows: dict[str, Any], tensors: Any) -> dict[str, Any]:
    """A calibration table's rows under the ONNX tensor names: tpu-mlir names an op's result
    `<ONNX output>_<op type>` (`/act/HardSwish_output_0_HardSwish`); the reference writes the
    ONNX name itself. Rows naming no tensor of the graph stay as they are (unused)."""
    named = {}
    for name, row in rows.items():
        stem = name.rpartition("_")[0]
        named[stem if name not in tensors and stem in tensors else name] = row
    return named


# --- quantize -----------------------------------------------------------------------------
def resolve_fp32_layers(model: Any, wanted: list[str]) -> list[str]:
    """Map user names (node names or their output tensor names) to node names; unknown -> error."""
    by_node = {node.name: node.name for node in model.graph.node}
    by_output = {out: node.name for node in model.graph.node for out in node.output}
    nodes = []
    for name in wanted:
        node = by_node.get(name) or by_output.get(name)
        if node is None:
            raise StageFailed(f"int8.fp32_layers: no layer named {name!r} in the model"
                              + _suggest(name, list(by_node), list(by_output)))
        nodes.append(node)
    return nodes


def _suggest(name: str, nodes: list[str], outputs: list[str]) -> str:
    """' (did you mean ...?)' from names containing `name` (a PyTorch module name such as
    'conv2' is part of the exported '/conv2/Conv') or close to it; else a few node names."""
    needle = name.strip("/").lower()
    close = [c for c in nodes + outputs if needle and needle in c.lower()]
    close += difflib.get_close_matches(name, nodes + outputs, n=3)
    close = list(dict.fromkeys(close))[:3]
    if close:
        return f" (did you mean {', '.join(close)}?)"
    return f" (its layers are named like {', '.join(nodes[:5])}{', ...' if len(nodes) > 5 else ''})"


def quantize(ctx: StageContext, model: Path, table: Path, target: Path) -> None:
    """The int8 QDQ model of (the prepared) `model` from the calibration table `table`, at `target`."""
    import json

    import onnx

    from bmbuild.calib.qdq import GraphView, apply, plan
    from bmbuild.calib.table import read_table

    thresholds = read_table(table)
    prepared = onnx.load(str(prepared_model(ctx, model)))
    excluded = resolve_fp32_layers(prepared, ctx.params["fp32_layers"])
    graph = GraphView.of(prepared)
    chip = ctx.params["target"]
    asymmetric = asymmetric_mode(ctx.params, table.parent, ctx.recipe.name, strict=True)  # auto: beside the table
    the_plan = plan(graph, thresholds, chip, set(excluded), ctx.params["per_channel"], asymmetric)
    if not the_plan.tensors:
        raise StageFailed(f"nothing to quantize: no tensor of this model is int8 on {chip}"
                          + (f" ({len(the_plan.kept_float)} kept in float: see the log)" if the_plan.kept_float else ""))
    onnx.save(apply(graph, the_plan), str(target))
    for name, reason in the_plan.kept_float.items():
        ctx.log.info(f"tensor {name!r} kept in float: {reason}")
    floats = [{"nodes": layer.names(graph), "op": layer.label} for layer in the_plan.float_layers(graph)]
    (ctx.out_dir / f"{ctx.recipe.name}_float_layers.json").write_text(json.dumps(floats, indent=1) + "\n")
    ops = sorted({layer["op"] for layer in floats})
    ctx.log.info(f"wrote {target.name}: {len(the_plan.tensors)} tensors and {len(the_plan.weights)} weights int8 "
                 f"({chip}); {len(floats)} layers float ({', '.join(ops) or 'none'}); "
                 f"kept in fp32 by the recipe: {excluded or 'none'}")
    ctx.metrics.update({"quantized_nodes": len(the_plan.tensors), "quantized_weights": len(the_plan.weights),
                        "float_layers": len(floats), "kept_float": dict(the_plan.kept_float),
                        "fp32_layers": excluded, "asymmetric": asymmetric})


# --- compile_int8 -------------------------------------------------------------------------
def static_batch(model_path: Path, batch: int, target: Path, feeds: list[Any]) -> None:
    """A copy of the model with its batch dimension fixed to `batch`: each input's at its batch
    axis, and every output dimension named like one of those (`batch` in bmbuild's exports)."""
    import onnx

    model = onnx.load(str(model_path))
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    names = set()
    for value, feed in zip(inputs, feeds):
        dims = value.type.tensor_type.shape.dim
        if feed.batch_axis is not None and len(dims) > feed.batch_axis:
            if dims[feed.batch_axis].dim_param:
                names.add(dims[feed.batch_axis].dim_param)
            dims[feed.batch_axis].Clear()
            dims[feed.batch_axis].dim_value = batch
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param in names:
                dim.Clear()
                dim.dim_value = batch
    onnx.save(model, str(target))


def compile_batch(ctx: StageContext, model: Path, batch: int, target: Path) -> None:
    """The int8 `model` optimised by onnxruntime at the recipe's `opt` level for one batch size, at
    `target` (its batch fixed unless int8.dyn)."""
    params = ctx.params
    target.parent.mkdir(parents=True, exist_ok=True)
    source = model
    if not params["dyn"]:
        source = ctx.work_dir / f"{batch}b.onnx"
        static_batch(model, batch, source, input_feeds(ctx.recipe))
    # constant folding would turn every DequantizeLinear of an int8 weight into a float weight
    ort_session(source, params["opt"], save_to=target, disabled_optimizers=KEEP_INT8_WEIGHTS)
    ctx.log.info(f"wrote {target.relative_to(ctx.out_dir)} (onnxruntime {ORT_LEVELS[params['opt']]})")


def fp32_session(ctx: StageContext) -> Any:
    """compile_fp32's deployable model in onnxruntime."""
    return ort_session(deployable_fp32(ctx.inputs[StageName.COMPILE_FP32], ctx.recipe.name), 0)


def compare_compiled(ctx: StageContext, umodel: Path, compiled: dict[str, Path]) -> None:
    """`compare_int8` of the compiled models (batch size -> file) against compile_fp32's."""
    compare_int8(ctx, fp32_session(ctx), {int(batch): ort_session(path, 0) for batch, path in compiled.items()},
                 umodel)


def evaluate_compiled(ctx: StageContext, umodel: Path) -> None:
    evaluate(ctx, fp32_session(ctx), ort_session(umodel, ctx.params["opt"]))


KEEP_INT8_WEIGHTS = ("ConstantFolding",)


def compare_int8(ctx: StageContext, fp32: Any, int8: dict[int, Any], umodel: Path) -> None:
    """int8 vs fp32 on every held-out sample, for each batch size's model, then per layer.

    Metrics are per sample (mean and worst over the held-out set, `compare.per_sample`): a
    short last batch is padded, so every batch size sees the same samples and reports the
    same numbers. `fp32` and `int8` (batch size -> session) run the compiled models:
    onnxruntime sessions, or any runner with the part of their interface used here
    (get_inputs, get_outputs, run). The per-layer comparison runs the QDQ model in
    onnxruntime, whichever toolchain compiled it.
    """
    _, holdout = split(ctx.recipe)
    if not holdout:
        raise StageFailed("int8.cmp needs held-out samples: raise int8.cmp_samples")
    feeds = input_feeds(ctx.recipe)
    results: dict[str, Any] = {}
    done, total = 0, len(holdout) * len(int8)
    for batch, session in int8.items():
        names = [o.name for o in session.get_outputs()]
        pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in names}
        for chunk in batches(ctx, holdout, batch):
            done += rows_of(chunk, feeds)
            ctx.progress(done, total, "int8 vs fp32 samples")
            expected, actual = run_rows(fp32, chunk, feeds), run_rows(session, chunk, feeds)
            for name, ref, test in zip(names, expected, actual):
                pairs[name] += sample_rows(ref, test, rows_of(chunk, feeds))
        for name in names:
            summary = per_sample(pairs[name])
            results[f"b{batch}/{name}"] = summary
            ctx.log.info(f"cmp int8 vs fp32 b{batch}/{name} over {summary['samples']} samples: mean "
                         + " ".join(f"{k}={v:.5g}" for k, v in summary.items() if isinstance(v, float))
                         + "; worst " + " ".join(f"{k}={v:.5g}" for k, v in summary["worst"].items()))
    ctx.metrics["cmp"] = results
    ctx.metrics["layers"] = layer_similarity(ctx, umodel, holdout)


def layer_similarity(ctx: StageContext, umodel: Path, holdout: list[Any]) -> list[dict[str, Any]]:
    """Each quantized tensor against its fp32 value, on the first held-out samples.

    `cos`/`sqnr`/`max_abs`: the int8 model's value (error accumulated from the input on) against
    fp32. `local_sqnr`: the error of quantizing this tensor alone (its fp32 value rounded to its
    own int8 scale): low where this tensor's int8 range cannot hold its values, the layers to
    keep in float. QDQ graphs rename tensors: the value int8 hardware holds for fp32 tensor T is
    `T_DequantizeLinear_Output`. Tensors that are constant in fp32 (all zeros, say) are skipped.
    """
    import onnx
    from onnx import numpy_helper

    fp32_path = prepared_model(ctx)
    qdq = onnx.load(str(umodel))
    produced = {out for node in qdq.graph.node for out in node.output}
    inits = {init.name: init for init in qdq.graph.initializer}
    fp32_onnx = onnx.load(str(fp32_path))
    producers = {out: node for node in fp32_onnx.graph.node for out in node.output}
    pairs = [(name, name + DEQUANT_SUFFIX) for name in float_tensors(fp32_onnx)
             if name + DEQUANT_SUFFIX in produced and name in producers and f"{name}_scale" in inits]
    if not pairs:
        return []
    fp32_outputs = expose_tensors(fp32_path, [a for a, _ in pairs], ctx.work_dir / "fp32_layers.onnx")
    int8_outputs = expose_tensors(umodel, [b for _, b in pairs], ctx.work_dir / "int8_layers.onnx")
    fp32_session = ort_session(ctx.work_dir / "fp32_layers.onnx", 0)
    int8_session = ort_session(ctx.work_dir / "int8_layers.onnx", 0)
    feeds = input_feeds(ctx.recipe)
    size = chunk_size(fp32_session, feeds, CALIBRATION_BATCH)
    chunk = next(batches(ctx, holdout[:size], size))
    fp32_values = dict(zip(fp32_outputs, run_rows(fp32_session, chunk, feeds)))
    int8_values = dict(zip(int8_outputs, run_rows(int8_session, chunk, feeds)))
    layers = []
    for fp32_name, int8_name in pairs:
        ref = fp32_values[fp32_name]
        if not np.ptp(ref) > 0:
            continue
        scale = float(numpy_helper.to_array(inits[f"{fp32_name}_scale"]))
        zero = numpy_helper.to_array(inits[f"{fp32_name}_zero_point"])
        low, high = (0, 255) if zero.dtype == np.uint8 else (-128, 127)
        offset = float(zero)
        local = similarity(ref, (np.clip(np.rint(ref / scale) + offset, low, high) - offset) * scale)
        sim = similarity(ref, int8_values[int8_name])
        node = producers[fp32_name]
        layers.append({"name": fp32_name, "node": node.name, "op": node.op_type,
                       "cos": sim.cos, "sqnr": sim.sqnr, "max_abs": sim.max_abs, "local_sqnr": local.sqnr})
    return layers


def evaluate(ctx: StageContext, fp32: Any, int8: Any) -> None:
    """fp32 and int8 accuracy on the recipe's labelled set, each run by its session (or runner)."""
    evaluation = ctx.recipe.eval
    assert evaluation is not None
    from bmbuild.calib.arrays import open_array
    from bmbuild.calib.dataset import assemble
    from bmbuild.errors import DataError

    x = open_array(evaluation.data, evaluation.x_key)
    y = open_array(evaluation.data, evaluation.y_key)
    if evaluation.limit:
        x, y = x[: evaluation.limit], y[: evaluation.limit]
    if len(x) != len(y):
        raise DataError(f"{evaluation.x_key} has {len(x)} samples but {evaluation.y_key} has {len(y)}",
                        evaluation.data)
    feeds = input_feeds(ctx.recipe)
    data_feed = next(feed for feed in feeds if feed.source is not None)
    expected = data_feed.sample_shape
    if tuple(x.shape[1:]) != expected:
        raise DataError(f"{evaluation.x_key} samples have shape {tuple(x.shape[1:])}, the model takes {expected}",
                        evaluation.data)
    k = 1 if evaluation.metric == "top1" else 5
    scores = {}
    for label, session in (("fp32", fp32), ("int8", int8)):
        correct = 0
        step = chunk_size(session, feeds, 64)
        for start in range(0, len(x), step):
            chunk = assemble(feeds, [np.ascontiguousarray(x[start:start + step], dtype=data_feed.dtype)])
            logits = run_rows(session, chunk, feeds)[0]
            top = np.argsort(-logits, axis=1)[:, :k]
            correct += int(np.sum(np.any(top == y[start:start + step, None], axis=1)))
            ctx.progress(min(start + step, len(x)), len(x), f"{label} eval samples")
        scores[label] = correct / len(x)
    ctx.metrics["eval"] = {"metric": evaluation.metric, "samples": int(len(x)), **scores,
                           "drop_points": 100 * (scores["fp32"] - scores["int8"])}
    ctx.log.info(f"{evaluation.metric}: fp32 {100 * scores['fp32']:.2f}% int8 {100 * scores['int8']:.2f}% "
                 f"on {len(x)} samples")
