"""What the three int8 stages share: the calibration data as keyed inputs (its feeds and split,
which the toolchains read too, are in bmbuild.calib.feeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmbuild.calib.feeds import input_feeds
from bmbuild.recipe import LoadedRecipe, Recipe


def is_int8(recipe: Recipe) -> bool:
    return recipe.prec == "INT8" and recipe.calibration is not None


def asymmetric_params(recipe: Recipe) -> dict[str, Any]:
    """int8.asymmetric for the keys of the stages it changes (calibrate decides `auto`; quantize and
    compile_int8 build the mode), only when it can be asymmetric: true, or auto on a chip with
    asymmetric int8. Symmetric builds (BM1684, or false) keep their keys."""
    from bmbuild.calib.targets import ASYMMETRIC_CHIPS

    value = recipe.int8.asymmetric
    if value is True or (value == "auto" and recipe.target in ASYMMETRIC_CHIPS):
        return {"asymmetric": value}
    return {}


def dataset_params(recipe: Recipe) -> dict[str, Any]:
    """The calibration settings that decide which samples are read and how."""
    cfg = recipe.calibration
    assert cfg is not None
    params = {
        "key": cfg.key,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "holdout": recipe.int8.cmp_samples if recipe.int8.cmp else 0,
        "preprocess": cfg.preprocess.key_dump() if cfg.preprocess else None,
        "shapes": recipe.shapes,
        "inputs": recipe.inputs_key(),
    }
    if cfg.inputs:  # only when set: recipes without per-input sources keep their keys
        params["input_data"] = input_sources(recipe)
    return params


def input_sources(recipe: Recipe) -> dict[str, Any]:
    """Each `calibration.inputs` entry for the key, its data named relative to the other inputs'
    (the files' contents are keyed as inputs, but not which input reads which folder: swapping two
    inputs' folders must change the key, moving the workspace must not)."""
    import os

    cfg = recipe.calibration
    assert cfg is not None
    folders = [str(own.data or cfg.data) for own in cfg.inputs.values()] + ([str(cfg.data)] if cfg.data else [])
    root = os.path.dirname(os.path.commonpath(folders)) if len(set(folders)) == 1 else os.path.commonpath(folders)
    return {name: {**own.model_dump(mode="json", exclude={"data"}),
                   "preprocess": own.preprocess.key_dump("json") if own.preprocess else None,
                   "data": os.path.relpath(str(own.data), root) if own.data else None}
            for name, own in sorted(cfg.inputs.items())}


def dataset_files(loaded: LoadedRecipe) -> list[Path]:
    """Every file whose content defines the calibration set (hashed through the stat cache)."""
    from bmbuild.calib.sources import feed_files

    return feed_files(input_feeds(loaded.recipe)) if loaded.recipe.calibration is not None else []
