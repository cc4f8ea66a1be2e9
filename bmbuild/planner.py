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

if TYPE_CHECKING:
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
