"""The reference toolchain's int8 path: calibrate, quantize (QDQ ONNX), compile_int8.

- calibrate streams the calibration set through the fp32 ONNX model with every float tensor
  exposed as an output, folding each batch into fixed-size histograms (memory does not grow
  with the number of samples), and writes a tpu-mlir calibration table.
- quantize hands the table's thresholds to `onnxruntime.quantization.quantize_static` through
  its calibration cache (symmetric int8 activations, scale = threshold/127 as on BM1684;
  per-channel symmetric int8 weights) and keeps `fp32_layers` in float.
- compile_int8 writes one optimised int8 model per batch size and compares int8 with fp32 on
  held-out samples, per output and per layer (each fp32 tensor against its dequantized twin).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bmbuild.calib.dataset import rows_of
from bmbuild.compare import pooled_top1, similarity, worst
from bmbuild.errors import StageFailed
from bmbuild.stages.base import StageContext
from bmbuild.stages.calibrate import table_name
from bmbuild.stages.int8_common import input_feeds, split
from bmbuild.toolchains.reference import ORT_LEVELS, deployable_fp32, ort_session, run_session

CALIBRATION_BATCH = 8
DEQUANT_SUFFIX = "_DequantizeLinear_Output"


def fp32_model(ctx: StageContext) -> Path:
    return ctx.inputs["compile_fp32"] / f"{ctx.recipe.name}.onnx"


def int8_umodel_name(ctx: StageContext) -> str:
    return f"{ctx.recipe.name}.int8.onnx"


def float_tensors(model: Any) -> list[str]:
    """Names of every float tensor computed by the graph, plus float graph inputs."""
    import onnx
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    initializers = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers
             and types.get(i.name) == onnx.TensorProto.FLOAT]
    for node in model.graph.node:
        names += [o for o in node.output if o and types.get(o) == onnx.TensorProto.FLOAT]
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
def calibrate(ctx: StageContext) -> None:
    import json

    import onnx

    from bmbuild.calib.histogram import StatsCollector
    from bmbuild.calib.registry import method_settings
    from bmbuild.calib.table import write_table

    params = ctx.params
    feeds = input_feeds(ctx.recipe)
    calib_refs, _ = split(ctx.recipe)
    model = onnx.load(str(fp32_model(ctx)))
    tensors = float_tensors(model)
    augmented = ctx.work_dir / "augmented.onnx"
    # graph inputs are recorded from the batch itself: exposed as outputs too, they were
    # counted twice (a doubled count in the stats file)
    graph_inputs = {i.name for i in model.graph.input}
    outputs = expose_tensors(fp32_model(ctx), [t for t in tensors if t not in graph_inputs], augmented)
    session = ort_session(augmented, 0)
    collector = StatsCollector(bins=params["bins"])
    seen = 0
    input_names = [feed.name for feed in feeds]
    for batch in batches(ctx, calib_refs, chunk_size(session, feeds, CALIBRATION_BATCH)):
        values = run_rows(session, batch, feeds)
        for name, array in zip(input_names, batch):
            if array.dtype.kind == "f":
                collector.update(name, array)
        for name, value in zip(outputs, values):
            if name in tensors and name not in graph_inputs:
                collector.update(name, value)
        seen += rows_of(batch, feeds)
    ctx.log.info(f"collected statistics of {len(collector)} tensors over {seen} samples")
    rows = collector.thresholds(params["method"], **method_settings(params))
    rows = {name: rows[name] for name in dict.fromkeys(input_names + tensors) if name in rows}
    header = {"method": params["method"], "samples": str(seen), "net_name": ctx.recipe.name}
    if params["method"] == "percentile":
        header["percentile"] = str(params["percentile"])
    write_table(ctx.out_dir / table_name(ctx.recipe), rows, header)
    stats = collector.to_dict()
    (ctx.out_dir / f"{ctx.recipe.name}_cali_stats.json").write_text(
        json.dumps({name: stats[name] for name in rows}, indent=1, sort_keys=True) + "\n")
    ctx.metrics.update({"method": params["method"], "samples": seen, "tensors": len(rows)})


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


def quantize(ctx: StageContext) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from bmbuild.calib.table import read_table

    table = read_table(ctx.inputs["calibrate"] / table_name(ctx.recipe))
    ranges = {name: (np.float32(-threshold), np.float32(threshold))
              for name, (threshold, _low, _high) in table.items()}
    cache = ctx.work_dir / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
    model = onnx.load(str(fp32_model(ctx)))
    excluded = resolve_fp32_layers(model, ctx.params["fp32_layers"])
    target = ctx.out_dir / int8_umodel_name(ctx)
    quantize_static(
        str(fp32_model(ctx)), str(target),
        calibration_data_reader=None,
        calibration_cache_path=str(cache),
        calibrate_method=CalibrationMethod.MinMax,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=ctx.params["per_channel"],
        nodes_to_exclude=excluded,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    quantized = onnx.load(str(target))
    q_nodes = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    if q_nodes == 0:
        raise StageFailed("quantization produced no QuantizeLinear node: nothing was quantized")
    ctx.log.info(f"wrote {target.name}: {q_nodes} QuantizeLinear nodes, kept in fp32: {excluded or 'none'}")
    ctx.metrics.update({"quantized_nodes": q_nodes, "fp32_layers": excluded})


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


def compile_int8(ctx: StageContext) -> None:
    recipe, params = ctx.recipe, ctx.params
    umodel = ctx.inputs["quantize"] / int8_umodel_name(ctx)
    deployables = {}
    for batch in params["batch_sizes"]:
        folder = ctx.out_dir / f"{batch}b.compilation"
        folder.mkdir()
        source = umodel
        if not params["dyn"]:
            source = ctx.work_dir / f"{batch}b.onnx"
            static_batch(umodel, batch, source, input_feeds(recipe))
        target = folder / f"{recipe.name}.int8.onnx"
        ort_session(source, params["opt"], save_to=target)
        deployables[batch] = target
        ctx.log.info(f"wrote {target.relative_to(ctx.out_dir)} (onnxruntime {ORT_LEVELS[params['opt']]})")
    fp32_deployable = deployable_fp32(ctx.inputs["compile_fp32"], recipe.name)
    if params["cmp"]:
        compare_int8(ctx, ort_session(fp32_deployable, 0),
                     {batch: ort_session(path, 0) for batch, path in deployables.items()}, umodel)
    if recipe.eval:
        evaluate(ctx, ort_session(fp32_deployable, 0), ort_session(umodel, params["opt"]))


def compare_int8(ctx: StageContext, fp32: Any, int8: dict[int, Any], umodel: Path) -> None:
    """int8 vs fp32 on held-out samples: per output for each batch size, then per layer.

    `fp32` and `int8` (batch size -> session) run the compiled models: onnxruntime sessions, or
    any runner with the part of their interface used here (get_inputs, get_outputs, run). The
    per-layer comparison runs the QDQ model in onnxruntime, whichever toolchain compiled it.
    """
    _, holdout = split(ctx.recipe)
    if not holdout:
        raise StageFailed("int8.cmp needs held-out samples: raise int8.cmp_samples")
    feeds = input_feeds(ctx.recipe)
    results: dict[str, Any] = {}
    for batch, session in int8.items():
        names = [o.name for o in session.get_outputs()]
        sims: dict[str, list[Any]] = {n: [] for n in names}
        pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in names}
        for chunk in batches(ctx, holdout, batch):
            if rows_of(chunk, feeds) < batch and not ctx.params["dyn"]:
                continue  # a static model takes full batches only
            expected, actual = run_session(fp32, chunk), run_session(session, chunk)
            for name, ref, test in zip(names, expected, actual):
                sims[name].append(similarity(ref, test))
                pairs[name].append((ref, test))
        for name in names:
            if not sims[name]:
                raise StageFailed(f"int8.cmp_samples ({len(holdout)}) is smaller than batch size {batch}")
            summary = worst(sims[name]).to_json()
            if _is_classifier(pairs[name][0][0]):
                summary["top1"] = pooled_top1(pairs[name])
            results[f"b{batch}/{name}"] = summary
            ctx.log.info(f"cmp int8 vs fp32 b{batch}/{name}: " + " ".join(
                f"{k}={v:.5g}" for k, v in summary.items()))
    ctx.metrics["cmp"] = results
    ctx.metrics["layers"] = layer_similarity(ctx, umodel, holdout)


def _is_classifier(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] > 1


def layer_similarity(ctx: StageContext, umodel: Path, holdout: list[Any]) -> list[dict[str, Any]]:
    """Each fp32 tensor against its dequantized counterpart in the QDQ model.

    QDQ graphs rename tensors: the value int8 hardware holds for fp32 tensor T is
    `T_DequantizeLinear_Output`, and the QDQ model may remove T itself (a Relu folded into its
    quantization). Comparing by plain name would compare different things.
    """
    import onnx

    fp32_path = fp32_model(ctx)
    qdq = onnx.load(str(umodel))
    produced = {out for node in qdq.graph.node for out in node.output}
    fp32_onnx = onnx.load(str(fp32_path))
    producers = {out: node for node in fp32_onnx.graph.node for out in node.output}
    pairs = [(name, name + DEQUANT_SUFFIX) for name in float_tensors(fp32_onnx)
             if name + DEQUANT_SUFFIX in produced and name in producers]
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
        sim = similarity(fp32_values[fp32_name], int8_values[int8_name])
        node = producers[fp32_name]
        layers.append({"name": fp32_name, "node": node.name, "op": node.op_type,
                       "cos": sim.cos, "sqnr": sim.sqnr, "max_abs": sim.max_abs})
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
        scores[label] = correct / len(x)
    ctx.metrics["eval"] = {"metric": evaluation.metric, "samples": int(len(x)), **scores,
                           "drop_points": 100 * (scores["fp32"] - scores["int8"])}
    ctx.log.info(f"{evaluation.metric}: fp32 {100 * scores['fp32']:.2f}% int8 {100 * scores['int8']:.2f}% "
                 f"on {len(x)} samples")
