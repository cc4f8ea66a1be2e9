"""YAML loading that remembers where every key came from, so errors can name file and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmbuild.errors import RecipeError

KeyPath = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Maps a key path such as ('fp32', 'opt') to the 1-based line where it is written."""

    file: Path
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # where a key came from when it is not `file` (merged from a defaults.yaml, say)
    files: dict[KeyPath, Path] = field(default_factory=dict)

    def _nearest(self, path: KeyPath) -> KeyPath:
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return path

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        return self.lines.get(self._nearest(path))

    def file_of(self, path: KeyPath) -> Path:
        """The file `path` was written in."""
        return self.files.get(self._nearest(path), self.file)

    def subtree(self, prefix: KeyPath) -> dict[KeyPath, tuple[int, Path]]:
        """(line, file) of every key at or below `prefix`."""
        n = len(prefix)
        return {p: (line, self.files.get(p, self.file)) for p, line in self.lines.items() if p[:n] == prefix}

    def replace_subtree(self, prefix: KeyPath, entries: dict[KeyPath, tuple[int, Path]]) -> None:
        n = len(prefix)
        for p in [p for p in self.lines if p[:n] == prefix]:
            del self.lines[p]
            self.files.pop(p, None)
        for p, (line, file) in entries.items():
            self.lines[p] = line
            if file != self.file:
                self.files[p] = file


def _construct(node: yaml.Node, path: KeyPath, smap: SourceMap, loader: yaml.SafeLoader) -> Any:
    smap.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise RecipeError("keys must be plain scalars", smap.file, key_node.start_mark.line + 1,
                                  ".".join(map(str, path)) or None)
            if key in out:
                raise RecipeError("duplicate key", smap.file, key_node.start_mark.line + 1,
                                  ".".join(map(str, path + (key,))))
            smap.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), smap, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), smap, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def text_line_of_byte(file: Path, offset: int) -> int:
    """1-based line holding byte `offset` of a file."""
    return file.read_bytes()[:offset].count(b"\n") + 1


def load_yaml(file: Path) -> tuple[Any, SourceMap]:
    """Parse one YAML document; returns the data and where each key was written."""
    smap = SourceMap(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", file) from None
    except UnicodeDecodeError as exc:
        line = text_line_of_byte(file, exc.start)
        raise RecipeError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file, line) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml: same marks, 10x faster
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, smap
        return _construct(node, (), smap, loader), smap
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise RecipeError(f"invalid YAML: {exc.problem or exc}", file, line) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid YAML: {exc}", file) from None
    finally:
        loader.dispose()
