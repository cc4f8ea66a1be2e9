"""What a stage's action key is made of, as pure functions of plain values.

A node's key components depend on: the stage (name, version), the toolchain (name, versions), the
stage's parameters as the running toolchain reads them, the digests of its external inputs, the
output digests of its upstream stages and an allow-list of environment variables. Gathering those
values (hashing files, asking a toolchain for its versions) is the caller's job; deciding what
enters the key is done here only, so `plan`, `status`, `cache pull` and the engine agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmbuild.cache import tree_digest

if TYPE_CHECKING:
    from bmbuild.graph import Node
    from bmbuild.recipe import LoadedRecipe
    from bmbuild.stages.base import Stage


def keyed_params(stage: "Stage", params: Mapping[str, Any],
                 consumes: Mapping[str, Iterable[str]] | None) -> dict[str, Any]:
    """The parameters of `stage` that can change its result under a toolchain that `consumes`
    (stage name -> parameter names) the stage's toolchain-specific ones: the common parameters,
    those the toolchain reads, minus those the stage's own settings leave unread (another
    calibration method's). A toolchain that declares nothing (None) is keyed on every parameter."""
    unused = stage.unused_params(dict(params))
    if consumes is None:
        return {name: value for name, value in params.items() if name not in unused}
    read = set(consumes.get(stage.name, ()))
    return {name: value for name, value in params.items()
            if name not in unused and (name not in stage.toolchain_params or name in read)}


def stage_inputs(stage: "Stage", loaded: "LoadedRecipe", toolchain: Any | None) -> tuple[dict[str, Any], list[Path]]:
    """(parameters, external input files) of `stage` for one recipe run by `toolchain` (None for a
    stage that uses none): what the stage is keyed on and exactly what it is given when it runs."""
    params, files = stage.params(loaded.recipe), stage.external_inputs(loaded)
    if toolchain is None:
        return keyed_params(stage, params, None), files
    params = keyed_params(stage, params, getattr(toolchain, "consumes", None))
    if stage.toolchain_inputs is not None:
        more_params, more_files = stage.toolchain_inputs(loaded, toolchain)
        params, files = {**params, **more_params}, [*files, *more_files]
    return params, files


def key_components(stage: str, stage_version: str, toolchain: Mapping[str, Any], params: Mapping[str, Any],
                   inputs: Mapping[str, str], upstream: Mapping[str, Mapping[str, str]],
                   env: Mapping[str, str | None]) -> dict[str, Any]:
    """Everything a stage's result depends on, from plain values (hashed by `cache.action_key`).

    `toolchain` is {"name", "versions"}; `params` the stage's parameters as `stage_inputs` keys them;
    `inputs` external input name -> content digest; `upstream` upstream stage -> its outputs
    (relative path -> digest); `env` the allow-listed variables (executor.KEY_ENV) and their values."""
    return {
        "stage": stage,
        "stage_version": stage_version,
        "toolchain": dict(toolchain),
        "params": dict(params),
        "inputs": dict(inputs),
        "upstream": {name: tree_digest(dict(outputs)) for name, outputs in sorted(upstream.items())},
        "env": dict(env),
    }


class Expected:
    """The outputs each node will have, known while walking nodes upstream first.

    A node's key needs its upstream outputs: known when the upstream is up to date (its manifest)
    or restorable (its cache entry), unknown until it runs otherwise. `plan`, `status`, `cache
    pull` and the engine's up-to-date pass walk the graph with this one rule."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, str]] = {}

    def pending(self, node: "Node") -> "Node | None":
        """The first upstream node whose outputs are not known (None: the key is computable)."""
        return next((dep for dep in node.deps if dep.id not in self.outputs), None)

    def upstream(self, node: "Node") -> dict[str, dict[str, str]]:
        """Upstream stage name -> its expected outputs (call when `pending` is None)."""
        return {dep.stage.name: self.outputs[dep.id] for dep in node.deps}

    def record(self, node: "Node", outputs: dict[str, str] | None) -> None:
        """What `node` will have published (None: not known before it runs)."""
        if outputs is not None:
            self.outputs[node.id] = outputs
