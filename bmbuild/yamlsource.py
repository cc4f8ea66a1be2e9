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

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def _construct(node: yaml.Node, path: KeyPath, smap: SourceMap, loader: yaml.SafeLoader) -> Any:
    smap.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise RecipeError("duplicate key", smap.file, key_node.start_mark.line + 1,
                                  ".".join(map(str, path + (key,))))
            smap.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), smap, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), smap, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(file: Path) -> tuple[Any, SourceMap]:
    """Parse one YAML document; returns the data and where each key was written."""
    smap = SourceMap(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", file) from None
    loader = yaml.SafeLoader(text)
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
