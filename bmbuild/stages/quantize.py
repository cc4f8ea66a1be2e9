"""quantize: the int8 umodel from the calibration table (symmetric int8, per-channel weights),
with `int8.fp32_layers` kept in float like the vendor's `-fpfwd_outputs`."""

from __future__ import annotations

from typing import Any

from bmbuild.pipeline import StageName
from bmbuild.recipe import Recipe
from bmbuild.stages.base import Stage, toolchain_step
from bmbuild.stages.int8_common import asymmetric_params, is_int8


def _params(recipe: Recipe) -> dict[str, Any]:
    params = {"net_name": recipe.name, "per_channel": recipe.int8.per_channel, "fp32_layers": recipe.int8.fp32_layers,
              "target": recipe.target}
    return {**params, **asymmetric_params(recipe)}


STAGE = Stage(
    name=StageName.QUANTIZE.value,
    version="7",  # 7: int8.asymmetric quantizes every tensor over its table min..max (tpu-mlir's getMinMax)
    # 6: an asymmetric tensor's range is the table's min..max (tpu-mlir's percentile); 5: ranges shared as tpu-mlir lowers (Relu, Concat, ...); 4: a Relu after a residual Add/BatchNorm
    # fused into it (tpu-mlir TopFuseRelu); 3: BM1684X SiLU/GELU outputs read by Conv/MatMul asymmetric
    # 2: quantizes what the target runs in int8 (bmbuild.calib.qdq), the rest stays float
    upstream=(StageName.COMPILE_FP32.value, StageName.CALIBRATE.value),
    applies=is_int8,
    params=_params,
    external_inputs=lambda loaded: [],
    run=toolchain_step(StageName.QUANTIZE.value),
    toolchain_params=frozenset({"target", "per_channel", "fp32_layers", "asymmetric"}),
    summary=lambda m: f"int8 umodel: {m.get('quantized_nodes', '?')} int8, "
                      f"{m.get('float_layers', m.get('float_nodes', '?'))} float, "
                      f"{len(m.get('fp32_layers', []))} kept in fp32 by the recipe"
                      + (", asymmetric" if m.get("asymmetric") else ""),
)
