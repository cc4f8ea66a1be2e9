"""What the three int8 stages share: the calibration data as keyed inputs and its split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bmbuild.recipe import LoadedRecipe, Recipe


def is_int8(recipe: Recipe) -> bool:
    return recipe.prec == "INT8" and recipe.calibration is not None


def dataset_params(recipe: Recipe) -> dict[str, Any]:
    """The calibration settings that decide which samples are read and how."""
    cfg = recipe.calibration
    assert cfg is not None
    return {
        "key": cfg.key,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "holdout": recipe.int8.cmp_samples if recipe.int8.cmp else 0,
        "preprocess": cfg.preprocess.model_dump() if cfg.preprocess else None,
        "shapes": recipe.shapes,
        "inputs": [spec.model_dump() for spec in recipe.input_specs],
    }


def dataset_files(loaded: LoadedRecipe) -> list[Path]:
    """Every file whose content defines the calibration set (hashed through the stat cache)."""
    from bmbuild.calib.dataset import content_files

    cfg = loaded.recipe.calibration
    return content_files(cfg) if cfg is not None else []


def split(recipe: Recipe) -> tuple[list[Any], list[Any]]:
    """(calibration samples, held-out samples): disjoint, deterministic."""
    from bmbuild.calib.dataset import list_samples, split_samples

    cfg = recipe.calibration
    assert cfg is not None
    holdout = recipe.int8.cmp_samples if recipe.int8.cmp else 0
    return split_samples(list_samples(cfg), cfg.samples, holdout, cfg.seed)


def sample_shape(recipe: Recipe) -> tuple[int, ...]:
    return tuple(recipe.shapes[0][1:])
