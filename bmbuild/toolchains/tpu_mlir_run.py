"""tpu-mlir bmodels run on the cmodel simulator (model_runner), measured by bmbuild itself.

tpu-mlir's own `npz compare PASSED` passes when no tensor matched, so it is never used: bmbuild runs
the bmodel, reads its outputs back by position (tpu-mlir renames them: `output` becomes
`/fc/Gemm_output_0_Gemm_f32`), and computes its own metrics (bmbuild.compare) against torch (fp32)
or the fp32 ONNX model on onnxruntime (int8). The cmodel takes seconds per inference, so samples
are few (fp32.cmp_samples, int8.cmodel_samples) and fed in batches of the bmodel's batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bmbuild.compare import pooled_top1, similarity, worst
from bmbuild.errors import StageFailed, ToolchainError
from bmbuild.stagecontext import StageContext

if TYPE_CHECKING:
    from bmbuild.toolchains.tpu_mlir import TpuMlirToolchain


def input_names(ctx: StageContext) -> list[str]:
    return [spec.name for spec in ctx.recipe.input_specs]


def onnx_file(ctx: StageContext) -> Path:
    return ctx.inputs.get("compile_fp32", ctx.out_dir) / f"{ctx.recipe.name}.onnx"


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
    """Outputs cut back to `rows` samples (a padded batch) and reshaped like the reference's."""
    fitted = []
    for value, shape in zip(values, shapes):
        value = value[:rows] if value.ndim and value.shape[0] > rows else value
        fitted.append(value.reshape(shape) if value.size == int(np.prod(shape)) else value)
    return fitted


# --- fp32.cmp -------------------------------------------------------------------------------------
def torch_reference(ctx: StageContext) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The source model: torch for traced models, onnxruntime for ONNX sources."""
    from bmbuild.artifacts import source_model
    from bmbuild.toolchains.reference import ort_session, run_session

    if ctx.recipe.source.framework == "onnx":
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
    """Each int8 bmodel on the cmodel against fp32 (onnxruntime) on the first held-out samples."""
    from bmbuild.calib.feeds import split
    from bmbuild.toolchains.reference import ort_session, run_session
    from bmbuild.toolchains.reference_int8 import batches
    from bmbuild.toolchains.tpu_mlir import BMODEL, int8_folder

    from bmbuild.calib.dataset import pad_rows, rows_of
    from bmbuild.calib.feeds import input_feeds

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
            expected = [e[:rows] for e in run_session(fp32, full)]
            actual = fit(run_bmodel(toolchain, ctx, bmodel, full, len(names)), [e.shape for e in expected], rows)
            for name, ref, test in zip(names, expected, actual):
                pairs[name].append((ref, test))
        for name, values in pairs.items():
            summary = worst(similarity(ref, test) for ref, test in values).to_json()
            if values[0][0].ndim == 2 and values[0][0].shape[1] > 1:
                summary["top1"] = pooled_top1(values)
            results[f"b{batch}/{name}"] = summary
            ctx.log.info(f"cmp int8 bmodel (cmodel) vs fp32 b{batch}/{name} on {len(holdout)} held-out samples: "
                         + " ".join(f"{k}={v:.5g}" for k, v in summary.items()))
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
