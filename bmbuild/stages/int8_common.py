"""What the three int8 stages share: the calibration data as keyed inputs and its split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.recipe import LoadedRecipe, Recipe

if TYPE_CHECKING:
    from bmbuild.calib.sources import InputFeed


def is_int8(recipe: Recipe) -> bool:
    return recipe.prec == "INT8" and recipe.calibration is not None


def asymmetric_params(recipe: Recipe) -> dict[str, Any]:
    """int8.asymmetric for the keys of the stages it changes (quantize, compile_int8), only when set:
    symmetric recipes keep their keys."""
    return {"asymmetric": True} if recipe.int8.asymmetric else {}


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


def input_feeds(recipe: Recipe) -> list["InputFeed"]:
    """How each model input is fed in the int8 stages: its calibration source, or its constant."""
    from bmbuild.calib.sources import InputFeed

    cfg = recipe.calibration
    assert cfg is not None
    several = len(recipe.data_inputs) > 1
    return [InputFeed(spec.name, spec.dtype, spec.batch_axis, recipe.sample_shape(index),
                      source=cfg.source_for(spec.name, several) if spec.value is None else None, value=spec.value)
            for index, spec in enumerate(recipe.input_specs)]


def dataset_files(loaded: LoadedRecipe) -> list[Path]:
    """Every file whose content defines the calibration set (hashed through the stat cache)."""
    from bmbuild.calib.sources import feed_files

    return feed_files(input_feeds(loaded.recipe)) if loaded.recipe.calibration is not None else []


def split(recipe: Recipe) -> tuple[list[Any], list[Any]]:
    """(calibration samples, held-out samples): disjoint, deterministic. A sample is a SampleRef,
    or one per data input for a model with several (bmbuild.calib.dataset.Sample)."""
    from bmbuild.calib.dataset import list_feed_samples, split_samples

    cfg = recipe.calibration
    assert cfg is not None
    holdout = recipe.int8.cmp_samples if recipe.int8.cmp else 0
    return split_samples(list_feed_samples(input_feeds(recipe)), cfg.samples, holdout, cfg.seed)
