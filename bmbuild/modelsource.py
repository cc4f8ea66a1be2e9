"""A model file and the local modules it imports: found without importing, loaded in isolation.

The trace key must change when any Python file the model is built from changes, not only the
file the recipe names; and two model folders that each have their own `layers.py` must never
see each other's module, even in one bmbuild process.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import linecache
import os
import sys
import sysconfig
import threading
import traceback
import types
from pathlib import Path
from typing import Any

# torch's tracer and its TorchScript ONNX exporter keep process-wide state
# (GLOBALS.in_onnx_export); with `-j` stages run on threads, so those calls take turns.
TORCH_LOCK = threading.RLock()

# the model files loaded in this process: the name compiled into their code -> the file
_SOURCES: dict[str, Path] = {}
USER_FRAMES_SHOWN = 8


def _module_file(folder: Path, dotted: str) -> list[Path]:
    """The files a dotted import resolves to below `folder` (package __init__ files included)."""
    parts = dotted.split(".")
    found: list[Path] = []
    current = folder
    for index, part in enumerate(parts):
        package = current / part
        if (package / "__init__.py").is_file():
            found.append(package / "__init__.py")
            current = package
            continue
        if index == len(parts) - 1 and (current / f"{part}.py").is_file():
            found.append(current / f"{part}.py")
        else:
            return found if index else []
        break
    return found


def local_imports(file: Path) -> list[Path]:
    """Python files next to `file` that it imports, transitively (sorted, `file` excluded)."""
    root = file.resolve().parent
    seen: set[Path] = set()
    pending = [file.resolve()]
    while pending:
        current = pending.pop()
        try:
            tree = ast.parse(current.read_bytes(), str(current))
        except (OSError, SyntaxError, ValueError):
            continue
        names: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.append(node.module)
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level >= 1:
                base = current.parent
                for _ in range(node.level - 1):
                    base = base.parent
                target = f"{node.module}" if node.module else ""
                for candidate in ([target] if target else []) + [
                        f"{target}.{a.name}".lstrip(".") for a in node.names]:
                    for path in _module_file(base, candidate):
                        if path not in seen:
                            seen.add(path)
                            pending.append(path)
        for name in names:
            for path in _module_file(root, name):
                if path not in seen:
                    seen.add(path)
                    pending.append(path)
    seen.discard(file.resolve())
    return sorted(seen)


def load_callable(file: Path, name: str) -> Any:
    """Run a model file by path (recipes are not packages) and return one of its names.

    The source is compiled from the bytes hashed into the key, never from __pycache__ (whose
    staleness check, mtime in seconds and size, misses a same-size edit within a second). Modules
    imported from the model's folder are dropped from sys.modules before and after, so another
    folder's module of the same name is never reused. Callers hold TORCH_LOCK.
    """
    folder = file.resolve().parent
    local = {p.resolve() for p in [file.resolve(), *local_imports(file)]}

    def purge() -> None:
        for key, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None)
            if origin and (Path(origin).resolve() in local or Path(origin).resolve().parent == folder):
                del sys.modules[key]

    module = types.ModuleType(f"bmbuild_model_{file.stem}")
    module.__file__ = str(file)
    source = file.read_bytes()
    code = compile(source, str(file), "exec", dont_inherit=True)
    _register_source(str(file), file, source)
    purge()
    sys.path.insert(0, str(folder))
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the user's model definition is the point
    finally:
        sys.dont_write_bytecode = dont_write
        sys.path.remove(str(folder))
        purge()
    if not hasattr(module, name):
        from bmbuild.errors import StageFailed

        raise StageFailed(f"{file} defines no {name!r}")
    return getattr(module, name)


def _register_source(name: str, file: Path, source: bytes) -> None:
    """Tracebacks show the model's lines and its real path although its code is named `name`.

    linecache keeps an entry without an mtime as it is (the exact bytes that were compiled).
    """
    _SOURCES[name] = file
    lines = importlib.util.decode_source(source).splitlines(keepends=True)
    linecache.cache[name] = (len(source), None, lines, str(file))


def _library_file(filename: str) -> bool:
    """A frame of bmbuild itself, the standard library or an installed package (torch, doit...)."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    if filename in _SOURCES or not os.path.isabs(filename):
        return False
    path = Path(filename).resolve()
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return True
    return any(path.is_relative_to(root) for root in _library_roots())


@functools.cache
def _library_roots() -> tuple[Path, ...]:
    """bmbuild's package folder and the standard library's."""
    stdlib = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib")}
    return (Path(__file__).resolve().parent, *sorted(stdlib))


def _shown_path(filename: str) -> str:
    path = _SOURCES.get(filename, Path(filename))
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def user_traceback(exc: BaseException) -> str:
    """The frames of `exc`'s traceback in the user's own files (model files and what they import),
    formatted like Python's traceback; '' when it has none.

    bmbuild's, the standard library's and installed packages' frames are left out: they say
    nothing the user can change. The full traceback goes to the stage's log.
    """
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if not _library_file(frame.filename)]
    if not frames:
        return ""
    lines = ["in your code (most recent call last):"]
    if len(frames) > USER_FRAMES_SHOWN:
        lines.append(f"  ... {len(frames) - USER_FRAMES_SHOWN} earlier frame(s)")
    for frame in frames[-USER_FRAMES_SHOWN:]:
        lines.append(f'  File "{_shown_path(frame.filename)}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    return "\n".join(lines)
