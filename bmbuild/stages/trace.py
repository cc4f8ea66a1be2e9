"""trace: load the PyTorch model on CPU in eval mode and `torch.jit.trace` it (what bmnetp takes).

The traced module is checked against eager execution on seeded inputs at every batch size,
so a trace that baked in control flow or a batch size fails here, with the numbers.

The saved file is a function of the trace key only: TorchScript's debug records (the Python call
stack of every traced node) and its random serialization id are made portable before publishing.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Callable

from bmbuild.artifacts import traced_path
from bmbuild.errors import StageFailed
from bmbuild.modelsource import TORCH_LOCK, local_imports
from bmbuild.pipeline import StageName
from bmbuild.recipe import LoadedRecipe, Recipe
from bmbuild.commands import quote
from bmbuild.stages.base import Stage, run_stage_steps
from bmbuild.steps import InProcess, Step
from bmbuild.stagecontext import StageContext
from bmbuild.torchmodel import build_model, example_inputs, run_torch, torch_note

TRACE_RTOL = 1e-4


def model_params(recipe: Recipe) -> dict[str, Any]:
    """What builds the model from its source besides the files (`source_files`)."""
    source = recipe.source
    return {
        "callable": source.callable_name,
        "kwargs": source.kwargs,
        "weights_key": source.weights.key if source.weights else None,
        "strip_prefix": source.weights.strip_prefix if source.weights else None,
    }


def _params(recipe: Recipe) -> dict[str, Any]:
    return {
        "net_name": recipe.name,  # outputs are named after it
        **model_params(recipe),
        "shapes": recipe.shapes,
        "inputs": recipe.inputs_key(),
        "batch_sizes": recipe.resolved_batch_sizes,
    }


def source_files(loaded: LoadedRecipe) -> list[Path]:
    """The model file, the local modules it imports and its weights."""
    recipe = loaded.recipe
    model_file = (loaded.file.parent / recipe.source.model_file).resolve()
    files = [model_file, *local_imports(model_file)]
    if recipe.source.weights:
        files.append(recipe.source.weights.path)
    return files


def steps(ctx: StageContext) -> list[Step]:
    """One in-process step: trace, check against eager, save portably."""
    recipe, source = ctx.recipe, ctx.recipe.source
    target = traced_path(ctx.out_dir, recipe)
    kwargs = ", ".join(f"{k}={v!r}" for k, v in source.kwargs.items())
    weights = f", weights {quote(str(source.weights.path))}" if source.weights else ""
    return [InProcess(f"{__name__}:trace", {"target": target}, (target,),
                      says=f"torch.jit.trace({source.model}({kwargs}){weights}) on CPU in eval mode, "
                           f"traced == eager at batch sizes {recipe.resolved_batch_sizes} -> {quote(str(target))}")]


def run(ctx: StageContext) -> None:
    run_stage_steps(ctx, StageName.TRACE.value, steps(ctx))


def trace(ctx: StageContext, target: Path) -> None:
    with TORCH_LOCK:
        _trace(ctx, target)


def _trace(ctx: StageContext, out: Path) -> None:
    import torch

    from bmbuild.compare import similarity

    recipe = ctx.recipe
    fresh_class_registry()
    model = build_model(ctx)
    first_batch = recipe.resolved_batch_sizes[0]
    example = [torch.from_numpy(a) for a in example_inputs(recipe, first_batch, seed=0)]
    ctx.log.info(f"tracing {recipe.source.model} with inputs {[list(t.shape) for t in example]}")
    with torch.no_grad():
        try:
            traced = torch.jit.trace(model, tuple(example), check_trace=False)
        except Exception as exc:  # tracing errors come from user model code
            raise StageFailed(f"torch.jit.trace failed: {type(exc).__name__}: {exc}") from None
    worst_rel = 0.0
    checks = {}
    for batch in recipe.resolved_batch_sizes:
        for seed in (1, 2):
            arrays = example_inputs(recipe, batch, seed)
            eager, trace_out = run_torch(model, arrays), run_torch(traced, arrays)
            if len(eager) != len(trace_out):
                raise StageFailed(f"traced model returns {len(trace_out)} outputs, eager {len(eager)}")
            for index, (a, b) in enumerate(zip(eager, trace_out)):
                if a.shape != b.shape:
                    raise StageFailed(f"batch {batch}: traced output {index} has shape {b.shape}, eager {a.shape}")
                sim = similarity(a, b)
                rel = sim.max_abs / max(float(abs(a).max()), 1e-12)
                worst_rel = max(worst_rel, rel)
                checks[f"batch{batch}/output{index}"] = sim.to_json()
                if rel > TRACE_RTOL:
                    raise StageFailed(
                        f"traced model differs from eager at batch {batch} (seed {seed}), output {index}: "
                        f"max abs error {sim.max_abs:.4g} (relative {rel:.3g} > {TRACE_RTOL}), cosine {sim.cos:.6f}"
                        " — data-dependent control flow is frozen by torch.jit.trace")
    model_file = (ctx.loaded.file.parent / recipe.source.model_file).resolve()
    left_out = save_portable(traced, out, path_roots(model_file, str(recipe.source.model_file)), ctx.work_dir)
    if left_out:
        ctx.log.info(f"left out debug records of an unknown layout (the file loads without them): {left_out}")
    ctx.metrics.update({"trace_vs_eager_max_rel": worst_rel, "checks": checks, "torch": torch.__version__})
    note = torch_note(torch.__version__)
    if note:  # the console says it once per run for NNTC builds (cli.cmd_run)
        ctx.log.info(f"note: traced with {note} (bmnetp may reject operators newer versions emit)")
    ctx.log.info(f"traced == eager at batch sizes {recipe.resolved_batch_sizes} (max relative error {worst_rel:.3g})")


# --- reproducible bytes -----------------------------------------------------------------------
# torch.jit.save stores, next to each code file, a `.debug_pkl` of source ranges. For a traced
# node that is the Python call stack at trace time, innermost first: absolute paths of the venv,
# of the model and of bmbuild, and the frames above the tracer (doit's runner in-process, a pool
# worker with `-j 2`). `.data/serialization_id` ends in 20 random digits. Each made a re-trace
# under the same key give other bytes.
SERIALIZATION_ID = ".data/serialization_id"
TRACER_FILE = "torch/jit/_trace.py"  # frames from here outwards are how the trace was started
_FRAME = re.compile(r"(.+)\((\d+)\): ([^\n]*)\n")


def path_roots(model_file: Path, as_named: str) -> list[tuple[str, str]]:
    """(absolute folder, portable prefix) pairs in the order they are tried: the model's folder
    first (its files are named relative to the recipe, `as_named` being how the recipe names the
    model file), then each sys.path folder (the venv's, the standard library's), longest first."""
    entries = {os.path.normpath(e) for e in sys.path if e and os.path.isabs(e)}
    entries |= {os.path.realpath(e) for e in entries}
    folders = sorted(entries, key=lambda e: (-len(e), e))
    return [(str(model_file.parent), os.path.dirname(as_named))] + [(f, "") for f in folders]


def portable_path(path: str, roots: list[tuple[str, str]]) -> str:
    """`path` relative to the first root holding it ('torch/nn/modules/conv.py'); an absolute
    path outside every root keeps only its file name."""
    if not os.path.isabs(path):
        return path
    for folder, prefix in roots:
        if path.startswith(folder.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            return f"{prefix.replace(os.sep, '/')}/{rel}" if prefix else rel
    return os.path.basename(path)


def portable_stack(lines: list[str], roots: list[tuple[str, str]]) -> list[str] | None:
    """A traced node's call stack (lines 'file(line): function\\n', then '') with portable paths,
    cut where the tracer was entered; None when `lines` are not such a stack (scripted code)."""
    if not lines or lines[-1] != "":
        return None
    frames = []
    for line in lines[:-1]:
        match = _FRAME.fullmatch(line)
        if match is None:
            return None
        path = portable_path(match[1], roots)
        if path == TRACER_FILE:
            break
        frames.append(f"{path}({match[2]}): {match[3]}\n")
    return frames + [""]


class _IntList(list):  # type: ignore[type-arg]
    """An int list pickled the way TorchScript's C++ unpickler wants it (a typed List[int])."""

    def __reduce__(self) -> tuple[Any, tuple[list[int]]]:
        from torch.jit._pickle import build_intlist

        return build_intlist, (list(self),)


class _DebugUnpickler(pickle.Unpickler):
    """Reads a `.debug_pkl`: plain tuples, strings and ints, plus TorchScript's int lists only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return _IntList
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a debug record")


def _text_length(lines: list[str]) -> int:
    return len("".join(lines).encode())  # source ranges count bytes of the UTF-8 text


def portable_debug_record(data: bytes, roots: list[tuple[str, str]],
                          shift: Callable[[int], int] = lambda offset: offset) -> bytes | None:
    """A `.debug_pkl` ('FORMAT_WITH_STRING_TABLE', strings, ((code offset, (source, start, end),
    tag), ...); a source is (line string indices, file name index, first line)) whose sources
    name no absolute path and no frame above the tracer; `shift` maps code offsets when the code
    file was renumbered (`renumber`). None when the layout is not this one: the record is then left
    out (TorchScript loads without it)."""
    table: dict[str, int] = {"": 0}  # the rewritten string table, in first-use order
    sources: dict[int, tuple[Any, ...]] = {}

    def index(text: str) -> int:
        return table.setdefault(text, len(table))

    def rewrite(source: tuple[Any, ...]) -> tuple[Any, ...]:
        """(new source, (old, new) text length for a call stack, else None)."""
        lines_index, name_index, first_line = source
        lines = [texts[i] for i in lines_index]
        stack = portable_stack(lines, roots)
        kept = lines if stack is None else stack
        new = (_IntList(index(line) for line in kept), index(portable_path(texts[name_index], roots)), first_line)
        return new, None if stack is None else (_text_length(lines), _text_length(stack))

    def source_range(source: tuple[Any, ...], start: int, end: int) -> tuple[Any, ...]:
        if id(source) not in sources:  # torch shares one source between many ranges
            sources[id(source)] = rewrite(source)
        new, lengths = sources[id(source)]
        if lengths is not None:  # a traced node's range spans its whole call stack
            if (start, end) != (0, lengths[0]):
                raise ValueError("a call stack range that is not the whole stack")
            end = lengths[1]
        return new, start, end

    try:
        tag, texts, records = _DebugUnpickler(io.BytesIO(data)).load()
        if tag != "FORMAT_WITH_STRING_TABLE":
            return None
        rewritten = tuple((shift(offset), source_range(*span), span_tag) for offset, span, span_tag in records)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError):
        return None
    return pickle.dumps((tag, tuple(table), rewritten), protocol=2)


def fresh_class_registry() -> None:
    """Forget the TorchScript classes of earlier traces in this process (as torch's own tests do).

    A class compiled again with other attributes is named `___torch_mangle_<n>`: without this, a
    class traced before in the process (a -j 1 zoo, a reused pool or cluster worker) made even the
    first class of a trace mangled. Called before the model is built, so whatever its code
    scripts is registered afresh. The numbers themselves keep counting: `renumber` fixes those.
    """
    import torch

    torch._C._jit_clear_class_registry()
    torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
    torch.jit._state._clear_class_state()


MANGLED = re.compile(rb"___torch_mangle_(\d+)")


def _named_records(name: str) -> bool:
    """Records that name TorchScript classes: code and pickles (not tensor data, not debug records)."""
    return name.endswith(".py") or (name.endswith(".pkl") and not name.endswith(".debug_pkl"))


def _only_in_globals(data: bytes) -> bool:
    """Whether every mangled name in a pickle sits in a GLOBAL opcode, whose text ends with a
    newline (so it may change length), in a pickle without length-prefixed frames."""
    import pickletools

    found = 0
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "FRAME":
                return False
            if opcode.name == "GLOBAL":
                found += len(MANGLED.findall(str(arg).encode()))
    except Exception:  # not a pickle pickletools can walk
        return False
    return found == len(MANGLED.findall(data))


def mangle_numbers(records: dict[str, bytes]) -> dict[bytes, bytes]:
    """TorchScript's mangle numbers (a process-wide counter) renumbered 0, 1, ... in order of first
    appearance (record names, then contents, in archive order); {} when there are none or one
    sits where it cannot be rewritten safely."""
    numbers: dict[bytes, bytes] = {}
    for name, data in records.items():
        if name.endswith(".pkl") and not _only_in_globals(data):
            return {}
        for match in MANGLED.finditer(name.encode() + b"\n" + data):
            numbers.setdefault(match[1], str(len(numbers)).encode())
    return numbers


def renumber(data: bytes, numbers: dict[bytes, bytes]) -> tuple[bytes, Callable[[int], int]]:
    """`data` with its mangle numbers replaced, and the map from old to new offsets in it."""
    moves: list[tuple[int, int]] = []  # (end of a replaced name in the old text, total length change)

    def replace(match: re.Match[bytes]) -> bytes:
        new = numbers[match[1]]
        moves.append((match.end(), (moves[-1][1] if moves else 0) + len(new) - len(match[1])))
        return b"___torch_mangle_" + new

    text = MANGLED.sub(replace, data)

    def shift(offset: int) -> int:
        return offset + next((change for end, change in reversed(moves) if end <= offset), 0)

    return text, shift


def save_portable(module: Any, target: Path, roots: list[tuple[str, str]], scratch: Path) -> list[str]:
    """`torch.jit.save` to `target` with portable debug records and, as serialization id, a
    digest of the content; returns the debug records left out (of a layout not understood).

    torch saves to `scratch` (a folder) first; its records are copied in their order, one at a
    time, with torch's own archive writer (64-byte aligned, stored as `torch.save` stores
    tensors), which adds no random id when the archive has one. The archive's folder inside the
    zip is named after `target`, as `torch.jit.save(target)` names it.
    """
    import torch

    first = scratch / target.name
    torch.jit.save(module, str(first))
    reader = torch._C.PyTorchFileReader(str(first))
    writer = torch._C.PyTorchFileWriter(str(target))
    digest, left_out = hashlib.sha256(), []
    records = reader.get_all_records()
    named = {record: reader.get_record(record) for record in records if _named_records(record)}
    numbers = mangle_numbers(named)  # the same bytes whatever the process compiled before
    shifts: dict[str, Callable[[int], int]] = {}
    for record in records:
        data = named[record] if record in named else reader.get_record(record)
        name = MANGLED.sub(lambda m: b"___torch_mangle_" + numbers[m[1]], record.encode()).decode() \
            if numbers else record
        if numbers and record in named:
            data, shifts[record] = renumber(data, numbers)
        if name.endswith(".debug_pkl"):
            data = portable_debug_record(data, roots, shifts.get(record[:-len(".debug_pkl")], lambda offset: offset))
            if data is None:
                left_out.append(name)
        if name != SERIALIZATION_ID and data is not None:
            digest.update(b"%d:%s%d:" % (len(name), name.encode(), len(data)) + data)
            writer.write_record(name, data, len(data))
    # 40 decimal digits like torch's own id; torch.load only reports it (for logging)
    ident = b"%040d" % (int(digest.hexdigest(), 16) % 10**40)
    writer.write_record(SERIALIZATION_ID, ident, len(ident))
    writer.write_end_of_file()
    del reader
    first.unlink()
    return left_out


STAGE = Stage(
    name=StageName.TRACE.value,
    version="3",  # 3: portable debug records and a content-derived serialization id
    upstream=(),
    applies=lambda recipe: recipe.source.framework == "pytorch",
    params=_params,
    external_inputs=source_files,
    run=run,
    own_steps=steps,
    summary=lambda m: f"traced == eager (max rel {m.get('trace_vs_eager_max_rel', 0):.2g})",
    uses_toolchain=False,
)
