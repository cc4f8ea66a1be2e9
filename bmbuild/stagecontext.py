"""The context one run of one stage works in, handed by the stage to its toolchain.

Below both stages and toolchains: the stage builds it, the toolchain reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.recipe import LoadedRecipe, Recipe

if TYPE_CHECKING:
    from bmbuild.stagelog import StageLog
    from bmbuild.toolchains.base import Toolchain


@dataclass
class StageContext:
    """Everything one run of one stage may use. Outputs go to `out_dir` only."""

    loaded: LoadedRecipe
    params: dict[str, Any]
    inputs: dict[str, Path]          # upstream stage name -> its published output folder
    out_dir: Path                    # private temp folder, published atomically on success
    work_dir: Path                   # scratch space, deleted after the stage
    log: "StageLog"
    toolchain: "Toolchain"
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe
