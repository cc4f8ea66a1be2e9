"""compile_fp32: the fp32 deployable model (bmnetp on NNTC, ONNX + onnxruntime on reference),
compared against the source when `fp32.cmp` is on. The tolerance is checked on the recorded
metrics, outside the action key, so changing it never recompiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmbuild.compare import check_all, latency_summary
from bmbuild.pipeline import StageName
from bmbuild.recipe import LoadedRecipe, Recipe
from bmbuild.stages.base import Stage, toolchain_step, tvm_params


def _params(recipe: Recipe) -> dict[str, Any]:
    fp32 = recipe.fp32
    return {
        "net_name": recipe.name,
        "target": recipe.target,
        "shapes": recipe.shapes,
        "inputs": recipe.inputs_key(),
        "batch_sizes": recipe.resolved_batch_sizes,
        "opt": fp32.opt,
        "dyn": fp32.dyn,
        "cmp": fp32.cmp,
        "enable_profile": fp32.enable_profile,
        "opset": fp32.opset,
        "cmp_samples": fp32.cmp_samples,
        "seed": fp32.seed,
        **tvm_params(recipe),
        # only when set: recipes without it keep their keys
        **({"output_names": recipe.output_names} if recipe.output_names else {}),
    }


def _inputs(loaded: LoadedRecipe) -> list[Path]:
    recipe = loaded.recipe
    if recipe.source.framework == "pytorch":
        return []  # the traced model comes from the trace stage
    return [(loaded.file.parent / recipe.source.model_file).resolve()]


def _model_source(loaded: LoadedRecipe, toolchain: Any) -> tuple[dict[str, Any], list[Path]]:
    """A toolchain that exports ONNX from the eager PyTorch module (`exports_eager`, the default)
    builds the model from source: the source, its weights and kwargs are then inputs of this stage.
    One that compiles the traced file only (NNTC's bmnetp) is keyed on that file alone."""
    if loaded.recipe.source.framework != "pytorch" or not getattr(toolchain, "exports_eager", True):
        return {}, []
    from bmbuild.stages.trace import model_params, source_files

    return {"model": model_params(loaded.recipe)}, source_files(loaded)


def _gate(recipe: Recipe, metrics: dict[str, Any]) -> list[str]:
    if not recipe.fp32.cmp or "cmp" not in metrics:
        return []
    return check_all(metrics["cmp"], recipe.fp32.tolerance).failures


def _summary(metrics: dict[str, Any]) -> str:
    return "; ".join(part for part in (_cmp_summary(metrics), latency_summary(metrics.get("latency"))) if part)


def _cmp_summary(metrics: dict[str, Any]) -> str:
    cmp = metrics.get("cmp")
    if not cmp:
        bmodels = metrics.get("bmodels")
        return f"{len(bmodels)} bmodel(s) compiled" if bmodels else "compiled (cmp off)"
    cos = min(v["cos"] for v in cmp.values())
    sqnr = min(v["sqnr"] for v in cmp.values())
    return f"fp32 cmp cos={cos:.6f} sqnr={sqnr:.1f}dB"


STAGE = Stage(
    name=StageName.COMPILE_FP32.value,
    version="2",  # 2: ONNX from the eager module; the deployable model stored once
    upstream=(StageName.TRACE.value,),
    applies=lambda recipe: True,
    params=_params,
    external_inputs=_inputs,
    run=toolchain_step(StageName.COMPILE_FP32.value),
    gate=_gate,
    summary=_summary,
    toolchain_inputs=_model_source,
    toolchain_params=frozenset({"target", "opt", "dyn", "cmp", "enable_profile", "opset", "cmp_samples", "seed",
                                "tvm"}),
)
