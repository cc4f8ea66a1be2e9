"""The toolchain protocol, and loading a toolchain by its registered name (bmbuild.toolchain_registry).

Implementations are imported lazily by name, so listing toolchains or planning a build never
imports torch, onnxruntime or a vendor SDK. A toolchain that cannot load here is listed with the
reason and fails only when a stage needs it. What a toolchain implements it declares on its class
(`consumes`, `optional_keys`, `reshapes_batch`), so a new toolchain is its own module plus one
registry line.
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bmbuild.errors import ToolchainError
from bmbuild.toolchain_registry import AUTO_ORDER, REGISTRY

if TYPE_CHECKING:
    from bmbuild.stagecontext import StageContext
    from bmbuild.steps import Step

__all__ = ["AUTO_ORDER", "REGISTRY", "Availability", "Toolchain", "choose", "load_toolchain", "optional_keys",
           "package_version", "require_usable", "toolchain_class"]


@dataclass(frozen=True)
class Availability:
    usable: bool
    version: str
    reason: str = ""


class Toolchain(Protocol):
    """What a toolchain does for the stages that differ between vendors: it says, per stage, the
    steps it takes (bmbuild.steps); one runner executes them and `run --dry-run` renders them."""

    name: str
    # compile_fp32 builds a PyTorch model from its source (to export ONNX from the eager module), so
    # the source is part of its key; False for a toolchain that compiles the traced file only.
    # Read with getattr(toolchain, "exports_eager", True).
    exports_eager: bool
    # stage name -> the stage's toolchain-specific parameters (Stage.toolchain_params) this toolchain
    # reads. Only those enter the stage's key and reach `ctx.params`; the common ones always do.
    consumes: dict[str, tuple[str, ...]]
    # the recipe keys only some toolchains implement (dotted: "int8.asymmetric") that this one does;
    # a class attribute, read without instantiating the toolchain (`optional_keys`)
    optional_keys: frozenset[str]

    def availability(self) -> Availability: ...

    # Optional: `preflight(loaded)` raises a RecipeError for what this toolchain cannot build, so
    # `validate` and `run` say it before any stage runs (bmbuild.preflight calls it when defined).

    def versions(self) -> dict[str, str]:
        """Versions that go into every action key (cheap: no heavy imports)."""
        ...

    def steps(self, stage: str, ctx: "StageContext") -> list["Step"]:
        """The steps `stage` takes in `ctx`, built without running anything or importing heavy
        libraries: a run executes them (bmbuild.steps.run_steps), `run --dry-run` renders them with
        `ctx.out_dir` the published stage folder and `ctx.log` None. A recipe error found here
        (a setting the toolchain cannot honour) is raised here, so the dry run reports it too."""
        ...


def toolchain_class(name: str) -> type:
    """The class registered as `name`, imported (its module imports nothing heavy) but not instantiated."""
    if name not in REGISTRY:
        raise ToolchainError(f"unknown toolchain {name!r}; known: {', '.join(REGISTRY)}")
    module_name, _, class_name = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolchainError(f"toolchain {name!r} cannot be loaded: {exc}") from None
    return getattr(module, class_name)


@functools.lru_cache(maxsize=1)
def optional_keys() -> dict[str, tuple[str, ...]]:
    """Recipe keys that only some toolchains implement (dotted key -> those toolchains, in registry
    order), from each toolchain's own `optional_keys`: `validate` and `run` refuse the key, before
    any stage runs, for a toolchain not named here (bmbuild.preflight)."""
    found: dict[str, list[str]] = {}
    for name in REGISTRY:
        try:
            declared = getattr(toolchain_class(name), "optional_keys", frozenset())
        except ToolchainError:
            continue
        for key in sorted(declared):
            found.setdefault(key, []).append(name)
    return {key: tuple(names) for key, names in sorted(found.items())}


def package_version(name: str) -> str:
    """An installed distribution's version without importing it ('absent' when missing).

    Remembered per search path: reading a distribution's METADATA costs milliseconds, and every
    node's key asks for the same few versions.
    """
    return _package_version(name, tuple(sys.path))


@functools.lru_cache(maxsize=256)
def _package_version(name: str, search_path: tuple[str, ...]) -> str:
    from importlib import metadata  # 60 ms of imports (email parsing): not for a no-op answered by the snapshot

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def choose(name: str, target: str | None = None) -> tuple[Toolchain, str]:
    """The toolchain a recipe asking for `name` gets, and why when `auto` chose it ('' otherwise):
    per target the first usable of AUTO_ORDER, else the reference toolchain (BM1684's when None)."""
    if name != "auto":
        return load_toolchain(name), ""
    target = target or "BM1684"
    passed: list[str] = []
    for candidate in AUTO_ORDER.get(target, ()):
        try:
            toolchain = load_toolchain(candidate)
        except ToolchainError:
            passed.append(f"{candidate} cannot load")
            continue
        if toolchain.availability().usable:
            return toolchain, f"auto for {target}"
        passed.append(f"{candidate} not usable here")
    return load_toolchain("reference"), f"auto for {target}" + (f": {', '.join(passed)}" if passed else "")


def load_toolchain(name: str, target: str | None = None) -> Toolchain:
    """The toolchain called `name`; 'auto' picks by `target` (`choose`)."""
    if name == "auto":
        return choose(name, target)[0]
    return toolchain_class(name)()


def require_usable(toolchain: Toolchain) -> None:
    """Fail before any stage runs when the chosen toolchain cannot work here."""
    status = toolchain.availability()
    if not status.usable:
        raise ToolchainError(f"toolchain {toolchain.name!r} is not usable here: {status.reason}")
