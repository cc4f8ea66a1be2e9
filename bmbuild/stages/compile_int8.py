"""compile_int8: one int8 deployable model per batch size (bmnetu on NNTC), compared against
fp32 on held-out samples and, with an `eval` section, scored on a labelled set.

Tolerances and `eval.max_drop` are gates on the recorded metrics, not part of the key: changing
them re-checks without recompiling. A failed comparison names the layers that diverge most.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmbuild.compare import check_all, codegen_hint, latency_summary
from bmbuild.pipeline import StageName
from bmbuild.recipe import LoadedRecipe, Recipe
from bmbuild.stages.base import Stage, toolchain_step, tvm_params
from bmbuild.stages.int8_common import asymmetric_params, dataset_files, dataset_params, is_int8


def _params(recipe: Recipe) -> dict[str, Any]:
    int8 = recipe.int8
    params: dict[str, Any] = {
        **dataset_params(recipe),
        "net_name": recipe.name,
        "target": recipe.target,
        "batch_sizes": recipe.resolved_batch_sizes,
        "opt": int8.opt,
        "dyn": int8.dyn,
        "cmp": int8.cmp,
        "cmp_samples": int8.cmp_samples,
        "cmodel_samples": int8.cmodel_samples,
    }
    params.update(tvm_params(recipe))
    params.update(asymmetric_params(recipe))
    if int8.enable_profile:  # only when set: keys of recipes without it are unchanged
        params["enable_profile"] = True
    if recipe.eval:
        params["eval"] = recipe.eval.model_dump(exclude={"data", "max_drop"})
    return params


def _inputs(loaded: LoadedRecipe) -> list[Path]:
    recipe = loaded.recipe
    files = dataset_files(loaded) if recipe.int8.cmp else []
    if recipe.eval:
        files.append(recipe.eval.data)
    return files


def gate(recipe: Recipe, metrics: dict[str, Any]) -> list[str]:
    failures: list[str] = []
    if recipe.int8.cmp and "cmp" in metrics:
        failures += check_all(metrics["cmp"], recipe.int8.tolerance).failures
        if failures:
            failures += codegen_hint(metrics)
        if failures and metrics.get("layers"):
            failures += diagnose(metrics["layers"])
    evaluation = metrics.get("eval")
    if recipe.eval and evaluation:
        drop = evaluation["drop_points"]
        if drop > recipe.eval.max_drop:
            failures.append(f"{evaluation['metric']} accuracy drops {drop:.2f} points "
                            f"(fp32 {100 * evaluation['fp32']:.2f}% -> int8 {100 * evaluation['int8']:.2f}%), "
                            f"more than eval.max_drop {recipe.eval.max_drop}")
    return failures


def diagnose(layers: list[dict[str, Any]], count: int = 5) -> list[str]:
    """The layers whose own int8 rounding loses most (lowest local SQNR), as int8.fp32_layers."""
    key = "local_sqnr" if all("local_sqnr" in layer for layer in layers) else "sqnr"
    worst = sorted(layers, key=lambda layer: layer[key])[:count]
    lines = ["layers losing most to their own int8 rounding (candidates for int8.fp32_layers):"]
    lines += [f"  {layer['name']} (op {layer.get('op', '?')}, node {layer.get('node', '?')}): "
              f"local sqnr={layer.get('local_sqnr', layer['sqnr']):.1f}dB, vs fp32 cos={layer['cos']:.4f}"
              for layer in worst]
    nodes = list(dict.fromkeys(layer.get("node") or layer["name"] for layer in worst))
    lines.append(f"  int8: {{fp32_layers: [{', '.join(nodes)}]}}")
    return lines


def summary(metrics: dict[str, Any]) -> str:
    parts = []
    cmp = metrics.get("cmp")
    if cmp:
        cos = min(v["cos"] for v in cmp.values())
        sqnr = min(v["sqnr"] for v in cmp.values())
        text = f"int8 cmp cos={cos:.4f} sqnr={sqnr:.1f}dB"
        worst = [v["worst"]["cos"] for v in cmp.values() if "worst" in v]
        if worst:
            text = f"int8 cmp per sample: mean cos={cos:.4f} sqnr={sqnr:.1f}dB, worst cos={min(worst):.4f}"
        top1 = [v["top1"] for v in cmp.values() if "top1" in v]
        if top1:
            text += f" top1-agree={min(top1):.3f}"
        parts.append(text)
    evaluation = metrics.get("eval")
    if evaluation:
        parts.append(f"{evaluation['metric']} fp32 {100 * evaluation['fp32']:.2f}% "
                     f"int8 {100 * evaluation['int8']:.2f}%")
    if metrics.get("latency"):
        parts.append(latency_summary(metrics["latency"]))
    if metrics.get("note"):
        parts.append(metrics["note"])
    if not parts and metrics.get("bmodels"):
        parts.append(f"{len(metrics['bmodels'])} int8 bmodel(s) compiled")
    return "; ".join(parts) or "compiled"


STAGE = Stage(
    name=StageName.COMPILE_INT8.value,
    version="2",  # 2: per-sample metrics (mean and worst), int8 weights kept in compiled models
    upstream=(StageName.COMPILE_FP32.value, StageName.QUANTIZE.value),
    applies=is_int8,
    params=_params,
    external_inputs=_inputs,
    run=toolchain_step(StageName.COMPILE_INT8.value),
    toolchain_params=frozenset({"target", "opt", "dyn", "cmp", "cmp_samples", "cmodel_samples", "tvm",
                                "enable_profile", "asymmetric"}),
    gate=gate,
    summary=summary,
)
