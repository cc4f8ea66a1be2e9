"""tpu-mlir bmodels run on the cmodel simulator (model_runner), measured by bmbuild itself.

tpu-mlir's own `npz compare PASSED` passes when no tensor matched, so it is never used: bmbuild runs
the bmodel, reads its outputs back by position (tpu-mlir renames them: `output` becomes
`/fc/Gemm_output_0_Gemm_f32`), and computes its own metrics (bmbuild.compare) against torch (fp32)
or the fp32 ONNX model on onnxruntime (int8). The cmodel takes seconds per inference, so samples
are few (fp32.cmp_samples, int8.cmodel_samples) and fed in batches of the bmodel's batch size.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bmbuild.compare import codegen_hint, per_sample, sample_rows, similarity, worst
from bmbuild.errors import StageFailed, ToolchainError
from bmbuild.pipeline import StageName
from bmbuild.stagecontext import StageContext

if TYPE_CHECKING:
    from bmbuild.toolchains.tpu_mlir import TpuMlirToolchain


def input_names(ctx: StageContext) -> list[str]:
    return [spec.name for spec in ctx.recipe.input_specs]


def onnx_file(ctx: StageContext) -> Path:
    return ctx.inputs.get(StageName.COMPILE_FP32, ctx.out_dir) / f"{ctx.recipe.name}.onnx"


def output_names(model: Path) -> list[str]:
    import onnx

    return [output.name for output in onnx.load(str(model), load_external_data=False).graph.output]


def run_bmodel(toolchain: "TpuMlirToolchain", ctx: StageContext, bmodel: Path, arrays: list[np.ndarray],
               expected_outputs: int) -> list[np.ndarray]:
    """One model_runner call on the cmodel; outputs in the bmodel's order."""
    folder = ctx.work_dir / "cmodel"
    folder.mkdir(parents=True, exist_ok=True)
    run = len(list(folder.glob("in_*.npz")))
    inputs, outputs = folder / f"in_{run}.npz", folder / f"out_{run}.npz"
    np.savez(inputs, **dict(zip(input_names(ctx), arrays)))
    # model_runner writes a folder beside the bmodel it runs: run a link in the work dir, so the
    # stage's published output holds only what it built
    link = folder / f"{bmodel.parent.name}.{bmodel.name}"
    if not link.exists():
        link.symlink_to(bmodel)
    toolchain.run(ctx, toolchain.runner(link, inputs, outputs))
    with np.load(outputs) as data:
        values = [data[name] for name in data.files]
    if len(values) != expected_outputs:
        raise ToolchainError(f"model_runner gave {len(values)} output(s) for {bmodel.name}, the model has "
                             f"{expected_outputs}: outputs cannot be matched by position")
    return values


def fit(values: list[np.ndarray], shapes: list[tuple[int, ...]], rows: int) -> list[np.ndarray]:
    """Outputs cut back to `rows` samples (a padded batch) and reshaped like the reference's. An
    output that already holds the reference's values is only reshaped: its first axis need not be
    the batch (a sequence model's [time, batch, classes])."""
    fitted = []
    for value, shape in zip(values, shapes):
        if value.size != int(np.prod(shape)) and value.ndim and value.shape[0] > rows:
            value = value[:rows]
        fitted.append(value.reshape(shape) if value.size == int(np.prod(shape)) else value)
    return fitted


def unpad(values: list[np.ndarray], rows: int, batch: int) -> list[np.ndarray]:
    """The first `rows` samples of outputs computed on a batch padded to `batch`; a full batch is
    left whole (axis 0 of an output need not be the batch)."""
    return values if rows == batch else [value[:rows] for value in values]


# --- fp32.cmp -------------------------------------------------------------------------------------
def torch_reference(ctx: StageContext) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The source model: torch for traced models, onnxruntime for ONNX sources and for a model cut at
    output_names (torch cannot give inner tensors by name)."""
    from bmbuild.artifacts import source_model
    from bmbuild.toolchains.reference import ort_session, run_session

    if ctx.recipe.source.framework == "onnx" or ctx.recipe.output_names:
        session = ort_session(onnx_file(ctx), 0)
        return lambda arrays: run_session(session, arrays)
    import torch

    from bmbuild.torchmodel import run_torch

    module = torch.jit.load(str(source_model(ctx)), map_location="cpu")
    return lambda arrays: run_torch(module, arrays)


def compare_fp32(toolchain: "TpuMlirToolchain", ctx: StageContext) -> dict[str, Any]:
    """Each fp32 bmodel on the cmodel against the source model, on seeded inputs."""
    from bmbuild.torchmodel import example_inputs
    from bmbuild.toolchains.tpu_mlir import BMODEL, fp32_folder

    params = ctx.params
    reference = torch_reference(ctx)
    names = output_names(onnx_file(ctx))
    results: dict[str, Any] = {}
    for batch in params["batch_sizes"]:
        bmodel = ctx.out_dir / fp32_folder(batch) / BMODEL
        sims: dict[str, list[Any]] = {name: [] for name in names}
        for sample in range(params["cmp_samples"]):
            arrays = example_inputs(ctx.recipe, batch, seed=params["seed"] * 1000 + sample + 1)
            expected = reference(arrays)
            actual = fit(run_bmodel(toolchain, ctx, bmodel, arrays, len(names)), [e.shape for e in expected], batch)
            for name, ref, test in zip(names, expected, actual):
                sims[name].append(similarity(ref, test))
        for name, values in sims.items():
            results[f"b{batch}/{name}"] = worst(values).to_json()
            ctx.log.info(f"cmp fp32 bmodel (cmodel) vs source b{batch}/{name}: {worst(values)}")
    return results


# --- calibration data -----------------------------------------------------------------------------
def write_dataset(ctx: StageContext, folder: Path) -> int:
    """The recipe's calibration samples (selected and preprocessed like every toolchain's), one .npz
    per sample keyed by input name (every input, constants included): run_calibration's --dataset."""
    from bmbuild.calib.feeds import split
    from bmbuild.toolchains.reference_int8 import batches

    folder.mkdir(parents=True, exist_ok=True)
    names = input_names(ctx)
    refs, _ = split(ctx.recipe)
    count = 0
    for count, sample in enumerate(batches(ctx, refs, 1), start=1):
        np.savez(folder / f"{count:05d}.npz", **dict(zip(names, sample)))
    if count == 0:
        raise StageFailed("no calibration samples")
    ctx.log.info(f"wrote {count} calibration samples to {folder}")
    return count


# --- int8.cmp and eval ----------------------------------------------------------------------------
def compare_int8(toolchain: "TpuMlirToolchain", ctx: StageContext) -> dict[str, Any]:
    """Each int8 bmodel on the cmodel against fp32 (onnxruntime) on the first held-out samples.

    Metrics are per sample (mean and worst over the samples, `compare.per_sample`, as the
    reference toolchain reports them): a short last batch is padded and cut back, so every batch
    size sees the same samples and reports the same numbers.
    """
    from bmbuild.calib.dataset import pad_rows, rows_of
    from bmbuild.calib.feeds import input_feeds, split
    from bmbuild.toolchains.reference import ort_session, run_session
    from bmbuild.toolchains.reference_int8 import batches
    from bmbuild.toolchains.tpu_mlir import BMODEL, int8_folder

    feeds = input_feeds(ctx.recipe)
    _, holdout = split(ctx.recipe)
    holdout = holdout[:ctx.params["cmodel_samples"]]
    if not holdout:
        raise StageFailed("int8.cmp needs held-out samples: raise int8.cmp_samples")
    fp32 = ort_session(onnx_file(ctx), 0)
    names = output_names(onnx_file(ctx))
    results: dict[str, Any] = {}
    for batch in ctx.params["batch_sizes"]:
        bmodel = ctx.out_dir / int8_folder(batch) / BMODEL
        pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in names}
        for chunk in batches(ctx, holdout, batch):
            rows = rows_of(chunk, feeds)
            full = pad_rows(chunk, feeds, rows, batch)
            expected = unpad(run_session(fp32, full), rows, batch)
            actual = fit(run_bmodel(toolchain, ctx, bmodel, full, len(names)), [e.shape for e in expected], rows)
            for name, ref, test in zip(names, expected, actual):
                pairs[name] += sample_rows(ref, test, rows)
        for name in names:
            summary = per_sample(pairs[name])
            results[f"b{batch}/{name}"] = summary
            ctx.log.info(f"cmp int8 bmodel (cmodel) vs fp32 b{batch}/{name} over {summary['samples']} held-out "
                         "samples: mean " + " ".join(f"{k}={v:.5g}" for k, v in summary.items() if isinstance(v, float))
                         + "; worst " + " ".join(f"{k}={v:.5g}" for k, v in summary["worst"].items()))
    return results


def evaluate(toolchain: "TpuMlirToolchain", ctx: StageContext) -> dict[str, Any]:
    """Task accuracy of the int8 bmodel (cmodel) and of fp32 (onnxruntime) on the same samples:
    the first eval.limit samples, or int8.cmodel_samples when no limit is set."""
    from bmbuild.calib.arrays import open_array
    from bmbuild.calib.dataset import assemble, pad_rows
    from bmbuild.errors import DataError
    from bmbuild.calib.feeds import input_feeds
    from bmbuild.toolchains.reference import ort_session, run_session
    from bmbuild.toolchains.tpu_mlir import BMODEL, int8_folder

    evaluation = ctx.recipe.eval
    assert evaluation is not None
    count = evaluation.limit or ctx.params["cmodel_samples"]
    x = open_array(evaluation.data, evaluation.x_key)[:count]
    y = open_array(evaluation.data, evaluation.y_key)[:count]
    if len(x) != len(y):
        raise DataError(f"{evaluation.x_key} has {len(x)} samples but {evaluation.y_key} has {len(y)}",
                        evaluation.data)
    batch = max(ctx.params["batch_sizes"])
    bmodel = ctx.out_dir / int8_folder(batch) / BMODEL
    fp32 = ort_session(onnx_file(ctx), 0)
    k = 1 if evaluation.metric == "top1" else 5
    correct = {"fp32": 0, "int8": 0}
    feeds = input_feeds(ctx.recipe)
    data_feed = next(feed for feed in feeds if feed.source is not None)
    for start in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[start:start + batch], dtype=data_feed.dtype)
        full = pad_rows(assemble(feeds, [chunk]), feeds, len(chunk), batch)
        labels = y[start:start + batch]
        fp32_logits = run_session(fp32, full)[0][:len(chunk)]
        int8_logits = fit(run_bmodel(toolchain, ctx, bmodel, full, len(fp32.get_outputs())),
                          [fp32_logits.shape], len(chunk))[0]
        for label, logits in (("fp32", fp32_logits), ("int8", int8_logits)):
            top = np.argsort(-logits, axis=1)[:, :k]
            correct[label] += int(np.sum(np.any(top == labels[:, None], axis=1)))
    scores = {label: value / len(x) for label, value in correct.items()}
    ctx.log.info(f"{evaluation.metric} on {len(x)} samples: fp32 {100 * scores['fp32']:.2f}% "
                 f"int8 bmodel (cmodel) {100 * scores['int8']:.2f}%")
    return {"metric": evaluation.metric, "samples": int(len(x)), **scores,
            "drop_points": 100 * (scores["fp32"] - scores["int8"])}


# --- per layer ------------------------------------------------------------------------------------
QUANT_TYPE = re.compile(r"->\s*tensor<[^>]*!quant\.uniform<([ui])8:f32,\s*([0-9.eE+-]+)(?::(-?\d+))?>>\s*"
                        r"loc\((#loc\d+|\"[^\"]*\")\)")


def quant_grids(tpu_mlir: Path) -> dict[str, tuple[float, int, int, int]]:
    """Each int8 tensor of a lowered tpu MLIR by name: (scale, zero point, low, high)."""
    text = tpu_mlir.read_text(encoding="utf-8", errors="replace")
    aliases = dict(re.findall(r'^(#loc\d+)\s*=\s*loc\("([^"]*)"\)', text, re.MULTILINE))
    grids = {}
    for sign, scale, zero, loc in QUANT_TYPE.findall(text):
        low, high = (-128, 127) if sign == "i" else (0, 255)
        grids[aliases.get(loc, loc.strip('"'))] = (float(scale), int(zero or 0), low, high)
    return grids


def layer_similarity(toolchain: "TpuMlirToolchain", ctx: StageContext) -> list[dict[str, Any]]:
    """Every tensor of the int8 model against its fp32 value, on the first held-out samples.

    tpu-mlir's interpreter runs, on one batch of the first batch size (model_runner
    --dump_all_tensors), the top MLIR (fp32) and the quantize stage's int8 tpu MLIR, which the
    bmodels are generated from (tpu-mlir checks the bmodel against it; the bmodel keeps no
    intermediate tensors, and bm1684's final MLIR does not run in the interpreter). Tensors are
    matched by name (tpu-mlir's `<ONNX output>_<op>`). `cos`/`sqnr`/`max_abs`: the int8 value
    (error accumulated from the input on) against fp32; `local_sqnr`: the fp32 value rounded to
    this tensor's own int8 grid (low: its range cannot hold its values).
    """
    from bmbuild.calib.dataset import pad_rows, rows_of
    from bmbuild.calib.feeds import input_feeds, split
    from bmbuild.toolchains.reference_int8 import batches
    from bmbuild.toolchains.tpu_mlir import copy_mlir, copy_top_mlir, fp32_folder, lowered_name

    batch = ctx.params["batch_sizes"][0]
    cwd = ctx.work_dir / "layers"
    top = copy_top_mlir(ctx, ctx.inputs[StageName.COMPILE_FP32] / fp32_folder(batch), cwd)
    lowered = ctx.inputs[StageName.QUANTIZE] / lowered_name(ctx, toolchain.chip(ctx))
    copy_mlir(lowered, cwd / lowered.name)
    feeds = input_feeds(ctx.recipe)
    _, holdout = split(ctx.recipe)
    chunk = next(batches(ctx, holdout[:batch], batch))
    inputs = cwd / "layers_in.npz"
    np.savez(inputs, **dict(zip(input_names(ctx), pad_rows(chunk, feeds, rows_of(chunk, feeds), batch))))
    values = {}
    for label, model in (("fp32", top), ("int8", cwd / lowered.name)):
        command = toolchain.runner(model, inputs, cwd / f"layers_{label}.npz", dump=True)
        toolchain.run(ctx, command)
        with np.load(command.outputs[0]) as data:
            values[label] = {name: data[name] for name in data.files}
    grids = quant_grids(lowered)
    layers = []
    for name, ref in values["fp32"].items():
        test = values["int8"].get(name)
        if name in input_names(ctx) or test is None or test.shape != ref.shape or not np.ptp(ref) > 0:
            continue
        sim = similarity(ref, test)
        node, _, op = name.rpartition("_")
        layer = {"name": name, "node": node.removesuffix("_output_0"), "op": op,
                 "cos": sim.cos, "sqnr": sim.sqnr, "max_abs": sim.max_abs}
        if name in grids:
            scale, zero, low, high = grids[name]
            layer["local_sqnr"] = similarity(ref, (np.clip(np.rint(ref / scale) + zero, low, high) - zero) * scale).sqnr
        layers.append(layer)
    worst_layers = sorted(layers, key=lambda layer: layer["cos"])[:3]
    ctx.log.info(f"per layer, int8 (tpu MLIR) vs fp32 (top MLIR) on {rows_of(chunk, feeds)} held-out sample(s): "
                 f"{len(layers)} tensors, lowest cos " + ", ".join(f"{w['name']} {w['cos']:.4f}" for w in worst_layers))
    return layers


# --- the in-process steps of the tpu-mlir toolchain (bmbuild.toolchains.tpu_mlir) -----------------
def toolchain() -> "TpuMlirToolchain":
    from bmbuild.toolchains.tpu_mlir import TpuMlirToolchain

    return TpuMlirToolchain()


def write_dataset_step(ctx: StageContext, folder: Path) -> None:
    ctx.metrics["samples"] = write_dataset(ctx, folder)


def compare_fp32_step(ctx: StageContext) -> None:
    ctx.metrics["cmp"] = compare_fp32(toolchain(), ctx)


def compare_int8_step(ctx: StageContext) -> None:
    ctx.metrics["cmp"] = compare_int8(toolchain(), ctx)


def layer_similarity_step(ctx: StageContext) -> None:
    """Per-layer data, and the interpreter's outputs against fp32 apart, held against the bmodel's
    (`compare.codegen_hint`): here as a warning, in the int8 gate as a failure's cause."""
    from bmbuild.calib.asymmetry import asymmetric_mode
    from bmbuild.toolchains.tpu_mlir import fp32_folder, output_layer_names

    layers = layer_similarity(toolchain(), ctx)
    ctx.metrics["layers"] = layers
    top = ctx.inputs[StageName.COMPILE_FP32] / fp32_folder(ctx.params["batch_sizes"][0]) / f"{ctx.recipe.name}.mlir"
    outputs = set(output_layer_names(top))
    ctx.metrics["interpreter_outputs"] = {layer["name"]: layer["cos"] for layer in layers if layer["name"] in outputs}
    ctx.metrics["asymmetric"] = asymmetric_mode(ctx.params, ctx.inputs[StageName.QUANTIZE], ctx.recipe.name)
    for hint in codegen_hint(ctx.metrics):  # said even when no gate reads it (a tolerance of -1)
        ctx.log.info(f"warning: {hint}")
        ctx.metrics["note"] = hint


def evaluate_step(ctx: StageContext) -> None:
    ctx.metrics["eval"] = evaluate(toolchain(), ctx)
