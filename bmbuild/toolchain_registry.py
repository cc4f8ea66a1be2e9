"""The registered toolchains by name, below every layer that names them.

Recipe validation, the JSON schema and the CLI's choices list these names; `bmbuild.toolchains.base`
loads an implementation from its import path (a string: nothing is imported here). A new toolchain
is its own module plus one line in REGISTRY; what it implements it declares itself (its class's
`optional_keys`, `consumes`), so nothing else lists it.
"""

from __future__ import annotations

REGISTRY: dict[str, str] = {
    "reference": "bmbuild.toolchains.reference:ReferenceToolchain",
    "nntc": "bmbuild.toolchains.nntc:NntcToolchain",
    "tpu-mlir": "bmbuild.toolchains.tpu_mlir:TpuMlirToolchain",
    "tvm": "bmbuild.toolchains.tvm:TvmToolchain",
}
# What `auto` tries per target, first usable wins; the reference toolchain when none is.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"BM1684": ("nntc", "tpu-mlir"), "BM1684X": ("tpu-mlir",)}
