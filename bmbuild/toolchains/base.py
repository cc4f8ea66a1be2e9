"""The toolchain protocol and registry: one implementation per vendor toolchain.

Implementations are imported lazily by name, so listing toolchains or planning a build never
imports torch, onnxruntime or a vendor SDK. A toolchain that cannot load here is listed with the
reason and fails only when a stage needs it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bmbuild.errors import ToolchainError

if TYPE_CHECKING:
    from bmbuild.stagecontext import StageContext


@dataclass(frozen=True)
class Availability:
    usable: bool
    version: str
    reason: str = ""


class Toolchain(Protocol):
    """What a toolchain does for the stages that differ between vendors."""

    name: str
    # compile_fp32 builds a PyTorch model from its source (to export ONNX from the eager module), so
    # the source is part of its key; False for a toolchain that compiles the traced file only.
    # Read with getattr(toolchain, "exports_eager", True).
    exports_eager: bool
    # stage name -> the stage's toolchain-specific parameters (Stage.toolchain_params) this toolchain
    # reads. Only those enter the stage's key and reach `ctx.params`; the common ones always do.
    consumes: dict[str, tuple[str, ...]]

    def availability(self) -> Availability: ...

    # Optional: `preflight(loaded)` raises a RecipeError for what this toolchain cannot build, so
    # `validate` and `run` say it before any stage runs (bmbuild.preflight calls it when defined).

    def versions(self) -> dict[str, str]:
        """Versions that go into every action key (cheap: no heavy imports)."""
        ...

    def compile_fp32(self, ctx: "StageContext") -> None: ...

    def calibrate(self, ctx: "StageContext") -> None: ...

    def quantize(self, ctx: "StageContext") -> None: ...

    def compile_int8(self, ctx: "StageContext") -> None: ...

    def commands(self, stage: str, ctx: "StageContext") -> list[str]:
        """What `stage` would do in `ctx`, one line per step, without doing it (`run --dry-run`).

        Vendor commands are shell lines a user can paste; work done in Python is described as
        `[in-process] ...`. `ctx.out_dir` is the published stage folder and `ctx.log` is None.
        """
        ...


REGISTRY: dict[str, str] = {
    "reference": "bmbuild.toolchains.reference:ReferenceToolchain",
    "nntc": "bmbuild.toolchains.nntc:NntcToolchain",
    "tpu-mlir": "bmbuild.toolchains.tpu_mlir:TpuMlirToolchain",
    "tvm": "bmbuild.toolchains.tvm:TvmToolchain",
}
# Recipe keys that only some toolchains implement (dotted key -> those toolchains): `validate` and
# `run` refuse the key, before any stage runs, for a toolchain not named here (bmbuild.preflight).
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "output_names": ("reference", "tvm", "tpu-mlir"),
    "int8.asymmetric": ("tpu-mlir", "reference"),
}
# What `auto` tries per target, first usable wins; the reference toolchain when none is.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"BM1684": ("nntc", "tpu-mlir"), "BM1684X": ("tpu-mlir",)}


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
    if name not in REGISTRY:
        raise ToolchainError(f"unknown toolchain {name!r}; known: {', '.join(REGISTRY)}")
    module_name, _, class_name = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolchainError(f"toolchain {name!r} cannot be loaded: {exc}") from None
    return getattr(module, class_name)()


def require_usable(toolchain: Toolchain) -> None:
    """Fail before any stage runs when the chosen toolchain cannot work here."""
    status = toolchain.availability()
    if not status.usable:
        raise ToolchainError(f"toolchain {toolchain.name!r} is not usable here: {status.reason}")
