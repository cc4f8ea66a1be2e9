"""The TVM toolchain (Apache TVM 0.27, `pip install 'bmbuild[tvm]'`): PyTorch -> ONNX -> Relax ->
a CPU shared library, the path of TVM's "compile a PyTorch model" tutorial, cached like every stage.

    compile_fp32  <name>.onnx (the reference toolchain's export) -> relax.frontend.onnx.from_onnx
                  -> tvm.compile(target) -> <N>b.fp32.so per batch size (dyn.fp32.so: one library
                  with a symbolic batch when fp32.dyn)
    calibrate     bmbuild's own calibration of <name>.onnx (the reference toolchain's code)
    quantize      bmbuild's own QDQ model (the reference toolchain's code)
    compile_int8  the QDQ model -> tvm.compile -> <N>b.int8.so (dyn.int8.so when int8.dyn)

TVM executes the QDQ graph with float kernels: QuantizeLinear/DequantizeLinear pairs around float
convolutions and matmuls. The int8 library reproduces int8 rounding, not int8 arithmetic or speed.

Every library runs in `tvm.relax.VirtualMachine`: compared with torch (fp32) or with the fp32
library (int8) through the reference toolchain's comparison and `eval` code, and timed (median of
`tvm.latency_runs` runs) next to onnxruntime on the same ONNX model and batch size.

Nothing here imports tvm until a stage runs (the import takes seconds): the version comes from
the package metadata and the LLVM version from the compiler library's read-only data.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import re
import shutil
import statistics
import struct
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from bmbuild.commands import quote
from bmbuild.errors import StageFailed
from bmbuild.pipeline import StageName
from bmbuild.recipe import Tvm
from bmbuild.stagecontext import StageContext
from bmbuild.calib.feeds import input_feeds
from bmbuild.steps import InProcess, Step
from bmbuild.toolchains.base import Availability, package_version
from bmbuild.toolchains.reference import (ReferenceToolchain, calibrate_steps, onnx_steps, ort_session, quantize_steps,
                                          run_session)

PACKAGES = ("tvm", "torch", "onnx", "onnxruntime")
DISTRIBUTIONS = ("apache-tvm", "torch", "onnx", "onnxruntime")
# Bump when this toolchain's code changes what it produces: it is part of every action key.
IMPLEMENTATION_VERSION = "1"
INSTALL_HINT = "pip install 'bmbuild[tvm]'"
# What tvm.support.cc looks for to link a library (export_library): $CXX, $CC, or one of these.
COMPILERS = ("g++", "gcc", "clang++", "clang", "c++", "cc")
FLOAT_KERNELS_NOTE = "TVM runs the QDQ graph with float kernels"
MODULE = "bmbuild.toolchains.tvm"


# --- file names ---------------------------------------------------------------------------------
def library_name(label: str, precision: str) -> str:
    """`1b.fp32.so`, `dyn.int8.so`: one library per batch size, or one with a symbolic batch."""
    return f"{label}.{precision}.so"


def labels(batch_sizes: list[int], dyn: bool) -> dict[str, int | None]:
    """Library label -> its fixed batch size (None: symbolic)."""
    return {"dyn": None} if dyn else {f"{batch}b": batch for batch in batch_sizes}


def settings(ctx: StageContext) -> Tvm:
    return ctx.recipe.tvm or Tvm()


# --- cheap detection ----------------------------------------------------------------------------
def compiler() -> str | None:
    """The C/C++ compiler TVM links libraries with, or None."""
    named = os.environ.get("CXX") or os.environ.get("CC")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for path in map(shutil.which, COMPILERS) if path), None)


@lru_cache(maxsize=1)
def llvm_version() -> str:
    """The LLVM TVM's compiler library was built with ('' when unknown), read from the library's
    .rodata section: importing tvm to ask takes seconds, this reads a few megabytes."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        return ""
    library = Path(list(spec.submodule_search_locations)[0]) / "lib" / "libtvm_compiler.so"
    try:
        with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start, end = elf_section(data, b".rodata") or (0, len(data))
            at = data.find(b"LLVM version ", start, end)
            found = re.match(rb"LLVM version (\d+(\.\d+)*)", data[at:at + 40]) if at >= 0 else None
            return found.group(1).decode() if found else ""
    except (OSError, ValueError, struct.error):
        return ""


def elf_section(data: Any, name: bytes) -> tuple[int, int] | None:
    """(start, end) file offsets of a section of a 64-bit little-endian ELF file, or None."""
    if data[:6] != b"\x7fELF\x02\x01":
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entsize, count, names_index = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * entsize
        name_at, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name_at, offset, size

    _, names, _ = header(names_index)
    for index in range(count):
        name_at, offset, size = header(index)
        if data[names + name_at:names + name_at + len(name) + 1] == name + b"\0":
            return offset, offset + size
    return None


# --- running a library --------------------------------------------------------------------------
@dataclass(frozen=True)
class Port:
    """An input or output of a library: its name and shape (the batch dimension may be a name)."""

    name: str
    shape: list[int | str]


class VmSession:
    """A compiled library in `tvm.relax.VirtualMachine`, behind the part of onnxruntime's
    InferenceSession interface that bmbuild's comparison and evaluation code calls."""

    def __init__(self, library: Path, inputs: list[Port], outputs: list[Port]):
        import tvm
        from tvm import relax

        self._inputs, self._outputs = inputs, outputs
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def run(self, output_names: Any, feeds: dict[str, Any]) -> list[Any]:
        import numpy as np
        import tvm

        args = [tvm.runtime.tensor(np.asarray(feeds[port.name], order="C")) for port in self._inputs]  # 0-d stays 0-d
        result = self._vm["main"](*args)
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return [value.numpy() for value in values]


def ports(model: Any, batch: int | None, batch_axes: list[int | None]) -> tuple[list[Port], list[Port]]:
    """The graph's inputs and outputs; with `batch`, it replaces each input's batch dimension (at
    its axis in `batch_axes`) and every output dimension named like one of those."""
    initializers = {init.name for init in model.graph.initializer}

    def dims_of(value: Any) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]

    inputs = [Port(value.name, dims_of(value)) for value in model.graph.input if value.name not in initializers]
    outputs = [Port(value.name, dims_of(value)) for value in model.graph.output]
    if batch is None:
        return inputs, outputs
    names = {port.shape[axis] for port, axis in zip(inputs, batch_axes)
             if axis is not None and axis < len(port.shape) and isinstance(port.shape[axis], str)}
    for port, axis in zip(inputs, batch_axes):
        if axis is not None and axis < len(port.shape):
            port.shape[axis] = batch
    for port in outputs:
        port.shape[:] = [batch if dim in names else dim for dim in port.shape]
    return inputs, outputs


@contextmanager
def native_output(ctx: StageContext) -> Iterator[None]:
    """What TVM's C++ code prints on stderr (`executable.cc: Warning: Scope ...`, one per
    function on every load and save) goes to the stage's log instead of the console.

    The redirection is of file descriptor 2 for the whole process: with `-j 1` the stage runs
    in bmbuild's own process, whose console writes to stdout.
    """
    sink_path = ctx.work_dir / "tvm-native-output.txt"
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(sink_path, "ab") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        text = sink_path.read_text(encoding="utf-8", errors="replace") if sink_path.exists() else ""
        sink_path.unlink(missing_ok=True)
        if text.strip():
            ctx.log.write_raw(text if text.endswith("\n") else text + "\n")


def build_library(ctx: StageContext, model_path: Path, batch: int | None, target: Path) -> VmSession:
    """Import one ONNX model into Relax (batch fixed unless None), compile it for the recipe's
    target, save the shared library and load it back into a VM."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(model_path))
    inputs, outputs = ports(model, batch, [spec.batch_axis for spec in ctx.recipe.input_specs])
    shape_dict = {port.name: port.shape for port in inputs} if batch is not None else None
    target_spec = settings(ctx).target
    started = time.perf_counter()
    with native_output(ctx):
        tvm_target = make_target(target_spec)
        try:
            module = from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)
        except Exception as exc:  # the frontend's own words name the operator it lacks
            raise StageFailed(f"TVM's ONNX frontend cannot import {model_path.name}: {_message(exc)}") from None
        try:
            executable = tvm.compile(module, target=tvm_target)
            executable.export_library(str(target))
        except Exception as exc:
            raise StageFailed(f"TVM could not compile {model_path.name} for {tvm_target}: {_message(exc)}") from None
        session = VmSession(target, inputs, outputs)
    ctx.log.info(f"wrote {target.name} ({target.stat().st_size} bytes, target {tvm_target}, "
                 f"{time.perf_counter() - started:.1f}s)")
    return session


def make_target(spec: dict[str, Any]) -> Any:
    """The recipe's target checked by TVM, and by LLVM for its `mcpu`: LLVM would ignore a CPU it
    does not know and silently generate generic code."""
    import tvm
    from tvm.target import codegen

    try:
        target = tvm.target.Target(spec)
    except Exception as exc:
        raise StageFailed(f"tvm.target {json.dumps(spec)} is not a TVM target: {_message(exc)}") from None
    cpu = str(target.attrs.get("mcpu", "") or "")
    if target.kind.name == "llvm" and cpu:
        triple = str(target.attrs.get("mtriple", "") or "") or codegen.llvm_get_system_triple()
        if not codegen.llvm_is_valid_cpu(cpu, triple):
            raise StageFailed(f"tvm.target {json.dumps(spec)} is not a TVM target: LLVM knows no CPU "
                              f"{cpu!r} for {triple}")
    return target


def _message(exc: BaseException) -> str:
    """An exception in one or a few lines: TVM's errors carry a C++ backtrace first."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    tail = [line for line in lines if not line.lstrip().startswith(("File ", "at ", "  "))] or lines
    return f"{type(exc).__name__}: " + " ".join(tail[-3:]) if tail else type(exc).__name__


def load_libraries(ctx: StageContext, model_path: Path, libraries: dict[str, Path]) -> dict[int, VmSession]:
    """The libraries built from `model_path` (label -> file, `labels`) in the VM: batch size -> its session."""
    import onnx

    model = onnx.load(str(model_path))
    axes = [spec.batch_axis for spec in ctx.recipe.input_specs]
    batch_sizes = ctx.params["batch_sizes"]
    sessions: dict[int, VmSession] = {}
    with native_output(ctx):
        for label, batch in labels(batch_sizes, label_is_dyn(libraries)).items():
            session = VmSession(libraries[label], *ports(model, batch, axes))
            sessions.update({b: session for b in ([batch] if batch is not None else batch_sizes)})
    return sessions


def label_is_dyn(libraries: dict[str, Path]) -> bool:
    return list(libraries) == ["dyn"]


def library_steps(ctx: StageContext, model: Path, precision: str) -> tuple[list[Step], dict[str, Path]]:
    """One build step per library (`labels`), and the libraries by label."""
    params, target = ctx.params, json.dumps(settings(ctx).target)
    libraries = {label: ctx.out_dir / library_name(label, precision)
                 for label in labels(params["batch_sizes"], params["dyn"])}
    steps: list[Step] = [InProcess(
        f"{MODULE}:build", {"model": model, "batch": batch, "library": libraries[label]}, (libraries[label],),
        says=f"tvm.relax.frontend.onnx.from_onnx({quote(str(model))}, batch "
             f"{batch if batch is not None else 'symbolic'}) -> tvm.compile(target {target}) "
             f"-> {quote(str(libraries[label]))}")
        for label, batch in labels(params["batch_sizes"], params["dyn"]).items()]
    return steps, libraries


def build(ctx: StageContext, model: Path, batch: int | None, library: Path) -> None:
    """One library of `model` for the recipe's target (`build_library`)."""
    build_library(ctx, model, batch, library)
    ctx.metrics["target"] = settings(ctx).target


def latency_step(ctx: StageContext, model: Path, libraries: dict[str, Path]) -> list[Step]:
    runs = settings(ctx).latency_runs
    if not runs:
        return []
    return [InProcess(f"{MODULE}:latency", {"model": model, "libraries": libraries},
                      says=f"latency: median of {runs} runs of each library in the VM, "
                           f"and of onnxruntime on {quote(str(model))}")]


def latency(ctx: StageContext, model: Path, libraries: dict[str, Path]) -> None:
    record_latency(ctx, load_libraries(ctx, model, libraries), model)


def median_ms(session: Any, arrays: list[Any], runs: int) -> float:
    """The median wall time of `runs` runs, in milliseconds, after one warm-up run."""
    run_session(session, arrays)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_session(session, arrays)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def record_latency(ctx: StageContext, sessions: dict[int, VmSession], onnx_model: Path) -> None:
    """`latency` metrics: each library's median against onnxruntime's on the same model and batch
    size (at the recipe's `opt` level: what the reference toolchain deploys)."""
    from bmbuild.torchmodel import example_inputs

    runs = settings(ctx).latency_runs
    if runs == 0:
        return
    baseline = ort_session(onnx_model, ctx.params["opt"])
    latency: dict[str, Any] = {}
    for batch, session in sessions.items():
        arrays = example_inputs(ctx.recipe, batch, seed=0)
        with native_output(ctx):
            tvm_ms = median_ms(session, arrays, runs)
        latency[f"b{batch}"] = {"ms": round(tvm_ms, 4), "onnxruntime_ms": round(median_ms(baseline, arrays, runs), 4),
                                "runs": runs}
        ctx.log.info(f"latency b{batch}: tvm {tvm_ms:.3f} ms, onnxruntime {latency[f'b{batch}']['onnxruntime_ms']:.3f} ms "
                     f"(median of {runs})")
    ctx.metrics["latency"] = latency


def fp32_library(folder: Path, batch: int) -> Path:
    """compile_fp32's library for `batch`: its symbolic-batch one when it built that."""
    dynamic = folder / library_name("dyn", "fp32")
    return dynamic if dynamic.exists() else folder / library_name(f"{batch}b", "fp32")


class TvmToolchain:
    """Apache TVM on the CPU: real compiled libraries, the numbers a deployment would see."""

    name = "tvm"
    # the stage parameters beyond the common ones that this toolchain reads (the key holds only these)
    consumes = {
        StageName.COMPILE_FP32.value: ("opt", "dyn", "cmp", "opset", "cmp_samples", "seed", "tvm"),
        # the reference's calibration runs here: it reads what the reference's reads (the target too)
        # (but not int8.asymmetric: TVM builds symmetric int8, so auto has nothing to choose)
        StageName.CALIBRATE.value: tuple(name for name in ReferenceToolchain.consumes[StageName.CALIBRATE.value]
                                         if name != "asymmetric"),
        StageName.QUANTIZE.value: ("target", "per_channel", "fp32_layers"),  # the target decides which ops run int8
        StageName.COMPILE_INT8.value: ("opt", "dyn", "cmp", "cmp_samples", "tvm"),
    }
    optional_keys = frozenset({"output_names"})

    def availability(self) -> Availability:
        version = f"apache-tvm {package_version('apache-tvm')}"
        missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            return Availability(False, version, f"python packages missing: {', '.join(missing)} ({INSTALL_HINT})")
        if compiler() is None:
            return Availability(False, version, "no C/C++ compiler to link the libraries: install g++ or set $CXX")
        llvm = llvm_version()
        return Availability(True, f"{version}, LLVM {llvm}" if llvm else version)

    def versions(self) -> dict[str, str]:
        return {"implementation": IMPLEMENTATION_VERSION, **{name: package_version(name) for name in DISTRIBUTIONS},
                "defaults": json.dumps(Tvm().model_dump(), sort_keys=True)}

    def steps(self, stage: str, ctx: StageContext) -> list[Step]:
        """All in-process: the reference toolchain's export, calibration and QDQ model, TVM's libraries."""
        return {StageName.COMPILE_FP32.value: fp32_steps, StageName.CALIBRATE.value: calibrate_steps,
                StageName.QUANTIZE.value: quantize_steps, StageName.COMPILE_INT8.value: int8_steps}[stage](ctx)


# --- compile_fp32 -----------------------------------------------------------------------------
def fp32_steps(ctx: StageContext) -> list[Step]:
    from bmbuild.artifacts import source_model

    params = ctx.params
    exported = ctx.out_dir / f"{ctx.recipe.name}.onnx"
    builds, libraries = library_steps(ctx, exported, "fp32")
    steps = [*onnx_steps(ctx, exported), *builds]
    if params["cmp"]:
        steps.append(InProcess(
            f"{MODULE}:compare_fp32_libraries", {"source": source_model(ctx), "exported": exported,
                                                 "libraries": libraries},
            says=f"cmp source vs each library in tvm.relax.VirtualMachine on {params['cmp_samples']} seeded "
                 f"input(s) per batch size {params['batch_sizes']}"))
    return steps + latency_step(ctx, exported, libraries)


def compare_fp32_libraries(ctx: StageContext, source: Path, exported: Path, libraries: dict[str, Path]) -> None:
    from bmbuild.toolchains.reference import compare_fp32

    sessions = load_libraries(ctx, exported, libraries)
    with native_output(ctx):
        compare_fp32(ctx, source, exported, sessions)


# --- int8: bmbuild's own calibration and QDQ model, compiled by TVM ----------------------------
def int8_steps(ctx: StageContext) -> list[Step]:
    recipe, params = ctx.recipe, ctx.params
    umodel = ctx.inputs.get(StageName.QUANTIZE.value, ctx.out_dir) / f"{recipe.name}.int8.onnx"
    builds, libraries = library_steps(ctx, umodel, "int8")
    steps = [*builds]
    if params["cmp"]:
        steps.append(InProcess(f"{MODULE}:compare_int8_libraries", {"umodel": umodel, "libraries": libraries},
                               says=f"cmp int8 vs fp32 libraries on {params['cmp_samples']} held-out samples, "
                                    "per output (per layer: the QDQ model in onnxruntime)"))
    steps.append(InProcess(f"{MODULE}:float_kernels_note",
                           says=f"note: {FLOAT_KERNELS_NOTE} (quantize/dequantize around float ops)"))
    if recipe.eval:
        steps.append(InProcess(f"{MODULE}:evaluate_libraries", {"umodel": umodel, "libraries": libraries},
                               says=f"{recipe.eval.metric} accuracy of the fp32 and int8 libraries "
                                    f"on {quote(str(recipe.eval.data))}"))
    return steps + latency_step(ctx, umodel, libraries)


def float_kernels_note(ctx: StageContext) -> None:
    ctx.log.info(f"note: {FLOAT_KERNELS_NOTE}: quantize/dequantize pairs around float operators")
    ctx.metrics["note"] = FLOAT_KERNELS_NOTE


def fp32_libraries(ctx: StageContext) -> dict[int, VmSession]:
    """compile_fp32's libraries in the VM, one session per batch size (a symbolic-batch library
    serves each batch size at that size)."""
    import onnx

    from bmbuild.toolchains import reference_int8

    fp32_model = onnx.load(str(reference_int8.fp32_model(ctx)))
    axes = [spec.batch_axis for spec in ctx.recipe.input_specs]
    with native_output(ctx):
        return {batch: VmSession(fp32_library(ctx.inputs[StageName.COMPILE_FP32], batch), *ports(fp32_model, batch, axes))
                for batch in ctx.params["batch_sizes"]}


def compare_int8_libraries(ctx: StageContext, umodel: Path, libraries: dict[str, Path]) -> None:
    from bmbuild.toolchains import reference_int8

    sessions = load_libraries(ctx, umodel, libraries)
    fp32 = fp32_libraries(ctx)
    with native_output(ctx):
        reference_int8.compare_int8(ctx, FixedBatches(fp32, input_feeds(ctx.recipe)), sessions, umodel)


def evaluate_libraries(ctx: StageContext, umodel: Path, libraries: dict[str, Path]) -> None:
    from bmbuild.toolchains import reference_int8

    sessions = load_libraries(ctx, umodel, libraries)
    largest = max(ctx.params["batch_sizes"])
    fp32 = fp32_libraries(ctx)
    with native_output(ctx):
        reference_int8.evaluate(ctx, fp32[largest], sessions[largest])


class FixedBatches:
    """fp32 libraries of fixed batch sizes as one session taking any number of samples up to the
    largest: each run goes to the library of that batch size, or is padded into a larger one."""

    def __init__(self, sessions: dict[int, VmSession], feeds: list[Any]):
        self._sessions = dict(sorted(sessions.items()))
        self._feeds = feeds  # how each input is fed (its batch axis): bmbuild.calib.sources.InputFeed

    def get_inputs(self) -> list[Port]:
        ports = next(iter(self._sessions.values())).get_inputs()
        return [Port(port.name, ["batch" if axis == feed.batch_axis else dim for axis, dim in enumerate(port.shape)])
                for port, feed in zip(ports, self._feeds)]

    def get_outputs(self) -> list[Port]:
        return next(iter(self._sessions.values())).get_outputs()

    def run(self, output_names: Any, feeds: dict[str, Any]) -> list[Any]:
        from bmbuild.calib.dataset import rows_of
        from bmbuild.toolchains.reference_int8 import run_rows

        arrays = [feeds[port.name] for port in self.get_inputs()]
        rows = rows_of(arrays, self._feeds)
        size = next((batch for batch in self._sessions if batch >= rows), None)
        if size is None:
            raise ValueError(f"{rows} samples do not fit the fp32 libraries ({list(self._sessions)})")
        return run_rows(self._sessions[size], arrays, self._feeds)
