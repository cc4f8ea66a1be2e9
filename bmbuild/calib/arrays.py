"""Reading .npy/.npz arrays safely (no pickles) and, for big stacked files, without loading them.

A single .npz holding every calibration sample can be larger than memory. Members that
`np.savez` stored uncompressed are memory-mapped straight out of the zip file, so streaming
reads only the samples it uses; compressed members (`np.savez_compressed`) must be inflated
whole, which is the price of compressing them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat

from bmbuild.errors import DataError
from bmbuild.fileinfo import resolve_key

_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
_LOCAL_HEADER = b"PK\x03\x04"


def _read_header(fp) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    version = npformat.read_magic(fp)
    if version == (1, 0):
        return npformat.read_array_header_1_0(fp)
    if version == (2, 0):
        return npformat.read_array_header_2_0(fp)
    return None  # rare header version: let np.load handle it


def _map_npz_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map an uncompressed .npz member; None when it cannot be mapped."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return None
    with open(path, "rb") as fp:
        fp.seek(info.header_offset)
        local = fp.read(30)
        if len(local) != 30 or local[:4] != _LOCAL_HEADER:
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        fp.seek(info.header_offset + 30 + name_len + extra_len)
        header = _read_header(fp)
        if header is None:
            return None
        shape, fortran, dtype = header
        offset = fp.tell()
    if dtype.hasobject:
        raise ValueError("object arrays are not supported")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def open_array(path: Path, key: str | None = None, *, mmap: bool = False) -> np.ndarray:
    """The array in an .npy file or the chosen member of an .npz, as stored (no conversion).

    With `mmap`, big files are mapped instead of read (see the module docstring).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            name = resolve_key(path, key)
            if mmap:
                mapped = _map_npz_member(path, name)
                if mapped is not None:
                    return mapped
            with np.load(path, allow_pickle=False) as npz:
                return npz[name]
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read array: {exc}", file=path) from exc
