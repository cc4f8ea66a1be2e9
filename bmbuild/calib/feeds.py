"""A recipe's calibration data as the int8 stages read it: how each model input is fed, and the
deterministic split into calibration and held-out samples.

Shared by the int8 stages (their keys) and the toolchains (their work). Importing this module
imports no numpy: `split` reads the data lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bmbuild.calib.sources import InputFeed
    from bmbuild.recipe import Recipe


def input_feeds(recipe: Recipe) -> list["InputFeed"]:
    """How each model input is fed in the int8 stages: its calibration source, or its constant."""
    from bmbuild.calib.sources import InputFeed

    cfg = recipe.calibration
    assert cfg is not None
    several = len(recipe.data_inputs) > 1
    return [InputFeed(spec.name, spec.dtype, spec.batch_axis, recipe.sample_shape(index),
                      source=cfg.source_for(spec.name, several) if spec.value is None else None, value=spec.value)
            for index, spec in enumerate(recipe.input_specs)]


def split(recipe: Recipe) -> tuple[list[Any], list[Any]]:
    """(calibration samples, held-out samples): disjoint, deterministic. A sample is a SampleRef,
    or one per data input for a model with several (bmbuild.calib.dataset.Sample)."""
    from bmbuild.calib.dataset import list_feed_samples, split_samples

    cfg = recipe.calibration
    assert cfg is not None
    holdout = recipe.int8.cmp_samples if recipe.int8.cmp else 0
    return split_samples(list_feed_samples(input_feeds(recipe)), cfg.samples, holdout, cfg.seed)
