"""A model file and the local modules it imports: found without importing, loaded in isolation.

The trace key must change when any Python file the model is built from changes, not only the
file the recipe names; and two model folders that each have their own `layers.py` must never
see each other's module, even in one bmbuild process.
"""

from __future__ import annotations

import ast
import sys
import threading
import types
from pathlib import Path
from typing import Any

# torch's tracer and its TorchScript ONNX exporter keep process-wide state
# (GLOBALS.in_onnx_export); with `-j` stages run on threads, so those calls take turns.
TORCH_LOCK = threading.RLock()


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
    code = compile(file.read_bytes(), str(file), "exec", dont_inherit=True)
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
