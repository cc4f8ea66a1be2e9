"""What a data or model file holds, read from its headers only: no numpy, no onnx.

`validate` and the start of `run` check a recipe against its files before any stage runs, and
neither may import numpy, torch or onnx (planning 100 recipes must stay cheap). So the .npy header
(a magic string, a version and a Python dict literal) and the graph inputs of an ONNX model (a few
protobuf fields; node bodies and weights are skipped, never read) are parsed here by hand.
Everything read is untrusted: a malformed file is a DataError naming it, never a crash.
"""

from __future__ import annotations

import ast
import mmap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from bmbuild.errors import DataError

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 1 << 16  # numpy writes a few hundred bytes; it refuses more than 10 000 itself
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
# A clone made without `git lfs pull` (model zoos keep their models and data in Git LFS) holds
# these small text files in place of the models and data: say so instead of "not an ONNX model".
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def is_lfs_pointer(path: Path) -> bool:
    """Whether `path` is a Git LFS pointer file rather than the content it stands for."""
    try:
        with open(path, "rb") as stream:
            return stream.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


LFS_HINT = "a Git LFS pointer, not the file itself: run `git lfs pull` in its repository"


def lfs_message(path: Path) -> str:
    return f"{path} is {LFS_HINT}"


def _unreadable(path: Path, what: str, exc: BaseException) -> DataError:
    """The error for a file that cannot be read as `what`, naming an LFS pointer as such."""
    if is_lfs_pointer(path):
        return DataError(lfs_message(path))  # the message names the file itself
    return DataError(f"{what}: {exc}", file=path)


@dataclass(frozen=True)
class ArrayHeader:
    """The shape and dtype of a stored array."""

    shape: tuple[int, ...]
    descr: str  # numpy's dtype string, e.g. '<f4'

    @property
    def kind(self) -> str:
        """numpy's dtype kind: 'f' float, 'i'/'u' integer, 'b' bool, 'O' object, ..."""
        return self.descr.lstrip("<>|=")[:1] or "?"

    @property
    def numeric(self) -> bool:
        return self.kind in "iuf"


def read_npy_header(stream: IO[bytes]) -> ArrayHeader:
    """The header of the .npy data at the stream's position (ValueError when it is not one)."""
    if stream.read(6) != NPY_MAGIC:
        raise ValueError("not a .npy array (no NUMPY magic)")
    version = stream.read(2)
    if len(version) != 2 or version[0] not in (1, 2, 3):
        raise ValueError(f"unknown .npy format version {tuple(version)}")
    size = int.from_bytes(stream.read(2 if version[0] == 1 else 4), "little")
    if size > MAX_NPY_HEADER:
        raise ValueError(f".npy header of {size} bytes")
    text = stream.read(size).decode("latin1" if version[0] < 3 else "utf-8")
    try:
        header = ast.literal_eval(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ValueError(f"unreadable .npy header: {exc}") from None
    if not isinstance(header, dict) or not {"descr", "shape"} <= set(header):
        raise ValueError("a .npy header without descr and shape")
    shape, descr = header["shape"], header["descr"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"a .npy header with shape {shape!r}")
    return ArrayHeader(shape, descr if isinstance(descr, str) else "|V")  # a list: a structured dtype


def npz_keys(path: Path) -> list[str]:
    """Array names in an .npz file, in archive order."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
    except _READ_ERRORS as exc:
        raise _unreadable(path, "cannot read as .npz", exc) from None


def resolve_key(path: Path, key: str | None) -> str:
    """The array to use inside an .npz: `key` if given, else the only one there is."""
    keys = npz_keys(path)
    if key is not None:
        if key not in keys:
            raise DataError(f"no array named {key!r} in the .npz (it holds {keys})", file=path)
        return key
    if len(keys) != 1:
        raise DataError(f"the .npz holds {len(keys)} arrays {keys}; set `key` to choose one",
                        file=path)
    return keys[0]


def array_header(path: Path, key: str | None = None) -> ArrayHeader:
    """The header of an .npy file, or of the chosen array of an .npz (see `resolve_key`)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            name = resolve_key(path, key)
            with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as member:
                return read_npy_header(member)
        with open(path, "rb") as stream:
            return read_npy_header(stream)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(path, "cannot read array", exc) from None


# --- ONNX graph inputs ---------------------------------------------------------------------------
# onnx.proto field numbers of what is read; everything else is skipped by its length
MODEL_GRAPH = 7
MODEL_IR_VERSION = 1
MODEL_OPSET_IMPORT = 8
GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER, GRAPH_INPUT = 5, 15, 11
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR = 1
TENSOR_ELEM_TYPE, TENSOR_SHAPE = 1, 2
SHAPE_DIM = 1
DIM_VALUE, DIM_PARAM = 1, 2
INITIALIZER_NAME = 8
SPARSE_VALUES = 1
# TensorProto.DataType -> the dtype names recipes use (others have no recipe name)
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


@dataclass(frozen=True)
class GraphInput:
    """A graph input of an ONNX model: its name, element type and dims (an int, a name, or None)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None  # None: no shape recorded

    @property
    def dtype(self) -> str:
        return ONNX_DTYPES.get(self.elem_type, f"onnx type {self.elem_type}")


def _varint(buf: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start of the bytes, end of the bytes) of one message."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("a field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise ValueError("truncated fixed-size field")
            yield number, wire, 0, pos
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _submessage(buf: bytes | mmap.mmap, start: int, end: int, number: int) -> tuple[int, int] | None:
    for field, wire, a, b in _fields(buf, start, end):
        if field == number and wire == 2:
            return a, b
    return None


def _text(buf: bytes | mmap.mmap, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


def _name(buf: bytes | mmap.mmap, start: int, end: int, number: int) -> str | None:
    found = _submessage(buf, start, end, number)
    return _text(buf, *found) if found else None


def _graph_input(buf: bytes | mmap.mmap, start: int, end: int) -> GraphInput:
    name, elem_type, dims = "", 0, None
    for field, wire, a, b in _fields(buf, start, end):
        if field == VALUE_NAME and wire == 2:
            name = _text(buf, a, b)
        elif field == VALUE_TYPE and wire == 2:
            tensor = _submessage(buf, a, b, TYPE_TENSOR)
            if tensor is None:
                continue
            for tfield, twire, ta, tb in _fields(buf, *tensor):
                if tfield == TENSOR_ELEM_TYPE and twire == 0:
                    elem_type = ta
                elif tfield == TENSOR_SHAPE and twire == 2:
                    dims = tuple(_dim(buf, da, db) for dfield, dwire, da, db in _fields(buf, ta, tb)
                                 if dfield == SHAPE_DIM and dwire == 2)
    return GraphInput(name, elem_type, dims)


def _dim(buf: bytes | mmap.mmap, start: int, end: int) -> int | str | None:
    for field, wire, a, b in _fields(buf, start, end):
        if field == DIM_VALUE and wire == 0:
            return a - (1 << 64) if a >= 1 << 63 else a
        if field == DIM_PARAM and wire == 2:
            return _text(buf, a, b)
    return None


def onnx_graph_inputs(path: Path) -> list[GraphInput]:
    """The inputs a caller feeds an ONNX model: the graph inputs that no initializer provides
    (models of IR < 4 list their weights as inputs too)."""
    try:
        with open(path, "rb") as stream:
            if not stream.seek(0, 2):
                raise ValueError("the file is empty")
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _inputs_of(buf)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, "cannot read the ONNX model's inputs", exc) from None


def onnx_versions(path: Path) -> tuple[int, int | None]:
    """(IR version, opset of the default domain or None) of an ONNX model, read from its top-level
    fields only: deciding whether a model needs upgrading must not parse its weights."""
    try:
        with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            ir_version, opset = 0, None
            for field, wire, a, b in _fields(buf, 0, len(buf)):
                if field == MODEL_IR_VERSION and wire == 0:
                    ir_version = a
                elif field == MODEL_OPSET_IMPORT and wire == 2:
                    domain, version = "", None
                    for inner, inner_wire, c, d in _fields(buf, a, b):
                        if inner == 1 and inner_wire == 2:
                            domain = _text(buf, c, d)
                        elif inner == 2 and inner_wire == 0:
                            version = c
                    if domain in ("", "ai.onnx"):
                        opset = version
            return ir_version, opset
    except (OSError, ValueError) as exc:
        raise _unreadable(path, "cannot read the ONNX model's versions", exc) from None


def _inputs_of(buf: mmap.mmap) -> list[GraphInput]:
    graph = _submessage(buf, 0, len(buf), MODEL_GRAPH)
    if graph is None:
        raise ValueError("no graph (not an ONNX model)")
    inputs: list[GraphInput] = []
    initializers: set[str] = set()
    for field, wire, a, b in _fields(buf, *graph):
        if wire != 2:
            continue
        if field == GRAPH_INPUT:
            inputs.append(_graph_input(buf, a, b))
        elif field == GRAPH_INITIALIZER:
            initializers.add(_name(buf, a, b, INITIALIZER_NAME) or "")
        elif field == GRAPH_SPARSE_INITIALIZER:
            values = _submessage(buf, a, b, SPARSE_VALUES)
            if values:
                initializers.add(_name(buf, *values, INITIALIZER_NAME) or "")
    return [item for item in inputs if item.name not in initializers]
