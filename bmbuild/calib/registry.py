"""The calibration methods: one registry that recipe validation, the JSON schema and the action
keys read. Light on purpose (no numpy): recipe models and the planner import it; the threshold
functions themselves live in bmbuild.calib.methods and run only inside the calibrate stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    """A threshold selection method and the calibration settings only it reads."""

    name: str
    summary: str
    params: tuple[str, ...] = ()  # e.g. `percentile`: keyed only when this method is chosen


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("minmax", "max |x|"),
    Method("percentile", "percentile of |x|", ("percentile",)),
    Method("kl", "tpu-mlir's entropy calibration, then its threshold tuning"),
    Method("mse", "minimum expected squared quantization error"),
)}
METHOD_NAMES = tuple(METHODS)


def description() -> str:
    """The recipe field's description (editors show it), listing the registered methods."""
    return "Threshold selection: " + ", ".join(f"{m.name} ({m.summary})" for m in METHODS.values()) + "."


def method_only_params() -> frozenset[str]:
    """Settings that some method declares as its own."""
    return frozenset(name for method in METHODS.values() for name in method.params)


def unused_params(method: str) -> frozenset[str]:
    """Settings of the other methods: `method` never reads them, so they stay out of its key."""
    own = METHODS[method].params if method in METHODS else ()
    return method_only_params() - set(own)


def method_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The chosen method's own settings from a stage's parameters (keyword arguments of
    `bmbuild.calib.methods.compute_threshold`)."""
    return {name: params[name] for name in METHODS[params["method"]].params}
