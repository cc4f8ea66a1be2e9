"""What every stage is: a name, a version, what it consumes, what it is keyed on, how it runs.

A stage is toolchain-independent; the toolchain says the steps of a stage where the vendor
tools differ (compile, calibrate, quantize) and bmbuild.steps runs them. Gates (tolerances) are kept out of the key, so
changing a tolerance re-checks the cached metrics instead of recompiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bmbuild.recipe import LoadedRecipe, Recipe
from bmbuild.stagecontext import StageContext

if TYPE_CHECKING:  # the runner (and shlex, subprocess) is imported when a stage runs, not to plan
    from bmbuild.steps import Step


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline."""

    name: str
    version: str
    upstream: tuple[str, ...]
    applies: Callable[[Recipe], bool]
    params: Callable[[Recipe], dict[str, Any]]
    external_inputs: Callable[[LoadedRecipe], list[Path]]
    run: Callable[[StageContext], None]
    gate: Callable[[Recipe, dict[str, Any]], list[str]] = lambda recipe, metrics: []
    summary: Callable[[dict[str, Any]], str] = lambda metrics: ""
    uses_toolchain: bool = True
    # key parts that depend on the toolchain doing the work: (loaded, toolchain) -> (params, files)
    toolchain_inputs: Callable[[LoadedRecipe, Any], tuple[dict[str, Any], list[Path]]] | None = None
    # parameters only some toolchains read: keyed (and passed to the stage) only when the running
    # toolchain lists them in its `consumes` for this stage; every other parameter is common
    toolchain_params: frozenset[str] = frozenset()
    # parameters the stage's own settings leave unread (another calibration method's): params -> names
    unused_params: Callable[[dict[str, Any]], frozenset[str]] = lambda params: frozenset()
    # the steps of a stage done the same on every toolchain (what `run` executes); None: the
    # toolchain's steps for this stage
    own_steps: Callable[[StageContext], list[Step]] | None = None

    def upstream_for(self, recipe: Recipe, present: set[str]) -> tuple[str, ...]:
        return tuple(name for name in self.upstream if name in present)

    def steps(self, ctx: StageContext) -> list[Step]:
        """What `run` executes in `ctx`, as data: rendered by `run --dry-run`."""
        return self.own_steps(ctx) if self.own_steps is not None else ctx.toolchain.steps(self.name, ctx)


def toolchain_step(name: str) -> Callable[[StageContext], None]:
    """A stage's `run` for work that differs per toolchain: the steps the toolchain gives for the
    stage, executed by the one runner (the same steps `run --dry-run` prints)."""

    def run(ctx: StageContext) -> None:
        run_stage_steps(ctx, name, ctx.toolchain.steps(name, ctx))

    run.__name__ = f"toolchain_{name}"
    return run


def run_stage_steps(ctx: StageContext, name: str, steps: list[Step]) -> None:
    """`steps` of stage `name` through the one runner (the `.cmd` header names the stage)."""
    from bmbuild.steps import run_steps

    by = f" ({ctx.toolchain.name})" if ctx.toolchain is not None else ""
    run_steps(ctx, steps, f"{ctx.recipe.name} {name}{by}: {len(steps)} step(s), "
                          f"in the stage's private work folder {ctx.work_dir}")


def tvm_params(recipe: Recipe) -> dict[str, Any]:
    """The recipe's `tvm` settings for the compile stages' keys; absent when the recipe has none,
    so recipes without them keep their keys (the TVM toolchain keys its defaults itself)."""
    return {"tvm": recipe.tvm.model_dump()} if recipe.tvm is not None else {}
