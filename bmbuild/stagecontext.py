"""The context one run of one stage works in, handed by the stage to its toolchain.

Below both stages and toolchains: the stage builds it, the toolchain reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

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
    reporter: Callable[[int, int, str], None] | None = None  # bmbuild.progress.ProgressReporter

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    def progress(self, done: int, total: int, label: str = "samples") -> None:
        """A long loop says how far it is (shown on the console, logged every quarter); cheap
        enough to call after every batch."""
        if self.reporter is not None:
            self.reporter(done, total, label)
