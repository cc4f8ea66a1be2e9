"""Names of the artifacts stages publish and later stages (and their toolchains) read.

The one place a file name is decided, so the stage writing it and the toolchain reading it
cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bmbuild.pipeline import StageName

if TYPE_CHECKING:
    from bmbuild.recipe import Recipe
    from bmbuild.stagecontext import StageContext


def traced_path(out_dir: Path, recipe: Recipe) -> Path:
    return out_dir / f"{recipe.name}.pt"


def source_model(ctx: StageContext) -> Path:
    """The model this stage compiles: the trace stage's output, or the recipe's own file."""
    recipe = ctx.recipe
    if StageName.TRACE in ctx.inputs:
        return ctx.inputs[StageName.TRACE] / f"{recipe.name}.pt"
    return (ctx.loaded.file.parent / recipe.source.model_file).resolve()


def table_name(recipe: Recipe) -> str:
    return f"{recipe.name}_cali_table"
