"""calibrate: activation statistics over the calibration set -> thresholds (calibration table).

The vendor equivalent is the fp32 umodel + LMDB + `calibration_use_pb`; tpu-mlir's is
`run_calibration.py`, whose table format the reference toolchain writes.
"""

from __future__ import annotations

from typing import Any

from bmbuild.pipeline import StageName
from bmbuild.calib.registry import unused_params
from bmbuild.recipe import Recipe
from bmbuild.stages.base import Stage, toolchain_step
from bmbuild.stages.int8_common import asymmetric_params, dataset_files, dataset_params, is_int8


def _params(recipe: Recipe) -> dict[str, Any]:
    cfg = recipe.calibration
    assert cfg is not None
    return {**dataset_params(recipe), "net_name": recipe.name, "method": cfg.method, "percentile": cfg.percentile,
            "bins": cfg.bins, "fp32_layers": recipe.int8.fp32_layers,
            "per_channel": recipe.int8.per_channel,  # NNTC calibrates per channel (-per_channel)
            "target": recipe.target,  # tpu-mlir: --part_asymmetric on BM1684X
            **{k: v for k, v in asymmetric_params(recipe).items() if v == "auto"}}  # auto: calibrate chooses


STAGE = Stage(
    name=StageName.CALIBRATE.value,
    version="10",  # 10: BM1684X int8.asymmetric auto chooses the mode (its asymmetric side as tpu-mlir imports it); 9: samples in tpu-mlir's order, kl on its growing histogram, BM1684X asymmetric tensors at its percentile range; 8: graph outputs at their |x| max; 7: kl as tpu-mlir computes and tunes it (reference); 5: the prepared model, skipped tensors
    upstream=(StageName.COMPILE_FP32.value,),
    applies=is_int8,
    params=_params,
    external_inputs=dataset_files,
    run=toolchain_step(StageName.CALIBRATE.value),
    toolchain_params=frozenset({"bins", "fp32_layers", "per_channel", "target", "asymmetric"}),
    unused_params=lambda params: unused_params(params["method"]),
    summary=lambda m: f"{m.get('method', '?')} calibration on {m.get('samples', '?')} samples, "
                      f"{m.get('tensors', '?')} tensors"
                      + (f"; asymmetric int8: {'yes' if m['asymmetric'] else 'no'}" if "asymmetric" in m else ""),
)
