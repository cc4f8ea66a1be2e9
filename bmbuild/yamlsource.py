"""YAML loading that remembers where every key came from, so errors can name file and line.

Recipes are untrusted text: nesting, alias expansion and file size are bounded, so a hostile
file (an alias bomb, a self-referencing alias, 10 000 nested brackets) is one clear error.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmbuild.errors import RecipeError

KeyPath = tuple[Any, ...]

MAX_BYTES = 1 << 20  # a recipe is a few hundred bytes; anything past 1 MiB is not one
MAX_DEPTH = 64  # nested mappings and lists, counting what aliases bring in
MAX_NODES = 20_000  # values after alias expansion ("billion laughs" stops here)
MAX_INT_BITS = 128  # 0xfff... of 5000 digits is an int Python cannot even print
YAML_TAG = "tag:yaml.org,2002:"
SCALAR_TAGS = {YAML_TAG + name for name in ("str", "int", "float", "bool", "null")}
MERGE_TAG = YAML_TAG + "merge"


def dotted(path: KeyPath) -> str:
    """A key path as written in messages: fp32.tolerance.cos, shapes[0]; odd keys quoted."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
            continue
        text = str(part)
        if not text.isprintable() or not text or any(c in text for c in ".[]: "):
            text = repr(text) if isinstance(part, str) else text
        out += f".{text}" if out else text
    return out


@dataclass
class SourceMap:
    """Maps a key path such as ('fp32', 'opt') to the 1-based line where it is written."""

    file: Path
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # where a key came from when it is not `file` (merged from a defaults.yaml, say)
    files: dict[KeyPath, Path] = field(default_factory=dict)

    def nearest(self, path: KeyPath) -> KeyPath:
        """`path`, or its nearest ancestor written in the file (a shorthand skips a level)."""
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return path

    def line_of(self, path: KeyPath) -> int:
        """The line of `path`, or of its nearest ancestor that has one (the document: line 1)."""
        return self.lines.get(self.nearest(path), 1)

    def file_of(self, path: KeyPath) -> Path:
        """The file `path` was written in."""
        return self.files.get(self.nearest(path), self.file)

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


class _Bounded:
    """A composer that stops at MAX_DEPTH levels and knows the key path it is at (mixed into a
    loader before yaml's Composer).

    A C loader (yaml.CSafeLoader) composes in C and would bypass this check: keep an equivalent
    bound (on the event stream) if the loader is ever switched."""

    def __init__(self, stream: str, file: Path):
        self.file = file
        self.text = stream
        self.newlines = [match.start() for match in re.finditer("\n", stream)]
        self.compose_path: list[Any] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        part = index.value if isinstance(index, yaml.ScalarNode) else index
        part = "?" if isinstance(part, yaml.Node) else part  # a complex key
        self.compose_path.append(part)
        try:
            if len(self.compose_path) > MAX_DEPTH + 1:
                path = tuple(p for p in self.compose_path[1:] if p is not None)
                raise RecipeError(f"nested deeper than {MAX_DEPTH} levels", self.file,
                                  self.line_at(self.peek_event().start_mark), dotted(path) or None)
            return super().compose_node(parent, index)
        finally:
            self.compose_path.pop()

    def snippet(self, node: yaml.Node) -> str:
        """The start of a node's text on one line (to name a key that is a list or a mapping)."""
        text = " ".join(self.text[node.start_mark.index:node.end_mark.index].split())
        return text if len(text) <= 30 else text[:27] + "..."

    def line_at(self, mark: yaml.Mark) -> int:
        """1-based line of `mark` counting only \\n, as editors and grep -n do (YAML also breaks
        lines at \\r, U+0085 and U+2028)."""
        return bisect.bisect_left(self.newlines, mark.index) + 1


class _Loader(_Bounded, yaml.SafeLoader):
    """PyYAML's own Python loader, bounded: the reference, and what words every syntax error."""

    def __init__(self, stream: str, file: Path):
        yaml.SafeLoader.__init__(self, stream)
        _Bounded.__init__(self, stream, file)


try:  # libyaml scans and parses 8x faster than PyYAML's Python scanner, with the same marks
    from yaml._yaml import CParser

    class _FastLoader(_Bounded, yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor,
                      yaml.resolver.Resolver):
        """yaml.CSafeLoader's parts, but composing in Python (_Bounded's bound holds)."""

        def __init__(self, stream: str, file: Path):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            _Bounded.__init__(self, stream, file)
except ImportError:  # PyYAML built without libyaml
    _FastLoader = _Loader  # type: ignore[misc,assignment]


class _Builder:
    """Nodes to plain data, recording each key's line; bounds depth and alias expansion."""

    def __init__(self, loader: _Loader, smap: SourceMap):
        self.loader = loader
        self.smap = smap
        self.nodes = 0
        self.active: set[int] = set()  # collections being built: meeting one again is a cycle

    def fail(self, message: str, path: KeyPath, line: int | None = None) -> RecipeError:
        return RecipeError(message, self.smap.file, line or self.smap.line_of(path), dotted(path) or None)

    def build(self, node: yaml.Node, path: KeyPath, smap: SourceMap) -> Any:
        smap.lines.setdefault(path, self.loader.line_at(node.start_mark))
        self.nodes += 1
        if self.nodes > MAX_NODES:  # blamed on the key written in the file, not on an anchor's line
            keys = next((path[:i] for i, part in enumerate(path) if not isinstance(part, str)), path)
            raise self.fail(f"the document expands to more than {MAX_NODES} values "
                            "(aliases repeated inside aliases?)", keys)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if len(path) > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels", path)
        if id(node) in self.active:
            raise self.fail("an alias refers to a mapping or list that contains it", path)
        default = YAML_TAG + ("map" if isinstance(node, yaml.MappingNode) else "seq")
        if node.tag != default:
            raise self.fail(f"unsupported tag {_short_tag(node.tag)}", path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, smap)
            return [self.build(item, path + (i,), smap) for i, item in enumerate(node.value)]
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        if node.tag == YAML_TAG + "timestamp":
            return node.value  # dates stay text: recipes have no date fields, and JSON has no dates
        if node.tag not in SCALAR_TAGS:
            raise self.fail(f"unsupported tag {_short_tag(node.tag)}", path, self.loader.line_at(node.start_mark))
        text = node.value if len(node.value) <= 40 else node.value[:40] + "..."
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, yaml.YAMLError):  # `!!float ''`
            raise self.fail(f"cannot read {text!r} as {_short_tag(node.tag)}", path,
                            self.loader.line_at(node.start_mark)) from None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.fail(f"integer {text} is too large (more than {MAX_INT_BITS} bits)", path,
                            self.loader.line_at(node.start_mark))
        return value

    def mapping(self, node: yaml.MappingNode, path: KeyPath, smap: SourceMap) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: dict[Any, tuple[Any, dict[KeyPath, int]]] = {}
        for key_node, value_node in node.value:
            line = self.loader.line_at(key_node.start_mark)
            if key_node.tag == MERGE_TAG:
                self.merge_into(merged, value_node, path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail("keys must be plain scalars", path + (self.loader.snippet(key_node),), line)
            key = self.scalar(key_node, path)
            if key in out:
                raise self.fail("duplicate key", path + (key,), line)
            smap.lines[path + (key,)] = line
            out[key] = self.build(value_node, path + (key,), smap)
        for key, (value, lines) in merged.items():
            if key not in out:  # keys written in the mapping win over merged ones
                out[key] = value
                smap.lines.update(lines)
        return out

    def merge_into(self, merged: dict[Any, tuple[Any, dict[KeyPath, int]]], node: yaml.Node,
                   path: KeyPath) -> None:
        """`<<: *a` or `<<: [*a, *b]`: earlier mappings win, as the YAML merge key says."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise self.fail("'<<' merges a mapping or a list of mappings", path,
                                self.loader.line_at(node.start_mark))
            part_map = SourceMap(self.smap.file)
            part = self.build(source, path, part_map)
            n = len(path) + 1
            for key, value in part.items():
                if key not in merged:
                    merged[key] = (value, {p: v for p, v in part_map.lines.items() if p[:n] == path + (key,)})


def _short_tag(tag: str) -> str:
    return repr("!!" + tag[len(YAML_TAG):] if tag.startswith(YAML_TAG) else tag)


def text_line_of_byte(file: Path, offset: int) -> int:
    """1-based line holding byte `offset` of a file."""
    return file.read_bytes()[:offset].count(b"\n") + 1


def _read(file: Path) -> str:
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise RecipeError(f"{size} bytes is too large for a recipe or config (at most {MAX_BYTES})", file, 1)
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", file) from None
    except UnicodeDecodeError as exc:
        line = text_line_of_byte(file, exc.start)
        raise RecipeError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file, line) from None


def _parse(text: str, smap: SourceMap) -> Any:
    """Read with libyaml; text it rejects is read again by _Loader, so errors are worded as ever."""
    try:
        return _compose(text, smap, _FastLoader)
    except yaml.YAMLError:
        if _FastLoader is _Loader:
            raise
        smap.lines.clear()
        smap.files.clear()
        return _compose(text, smap, _Loader)


def _compose(text: str, smap: SourceMap, loader_class: type[_Bounded]) -> Any:
    loader = loader_class(text, smap.file)  # type: ignore[call-arg]
    try:
        node = loader.get_single_node()
        if node is None:
            smap.lines[()] = 1
            return {}
        return _Builder(loader, smap).build(node, (), smap)
    finally:
        loader.dispose()


def _key_near(text: str, offset: int) -> str | None:
    """The key written on the line where a text stops being YAML at `offset` (best effort)."""
    smap = SourceMap(Path())
    try:
        _parse(text[:offset], smap)
    except (RecipeError, yaml.YAMLError):
        return None
    line = text[:offset].count("\n") + 1
    here = [path for path, at in smap.lines.items() if at == line and path]
    return dotted(max(here, key=len)) if here else None


def _syntax_error(exc: yaml.YAMLError, text: str, file: Path) -> RecipeError:
    """One line naming where the text stops being YAML (and the key there, when known)."""
    if isinstance(exc, yaml.reader.ReaderError):
        offset = exc.position
        problem = f"character #x{exc.character:04x} is not allowed in YAML text" if isinstance(
            exc.character, int) else str(exc.reason)
    elif isinstance(exc, yaml.MarkedYAMLError) and (exc.problem_mark or exc.context_mark):
        offset = (exc.problem_mark or exc.context_mark).index
        problem = ", ".join(str(part) for part in (exc.context, exc.problem) if part)
    else:
        return RecipeError(f"invalid YAML: {' '.join(str(exc).split())}", file, 1)
    line = text[:offset].count("\n") + 1
    key = _key_near(text, offset)
    problem = " ".join(problem.split())  # PyYAML's messages may span lines
    return RecipeError(f"invalid YAML: {problem}", file, line, key or None)


def load_yaml(file: Path) -> tuple[Any, SourceMap]:
    """Parse one YAML document; returns the data and where each key was written."""
    smap = SourceMap(file)
    text = _read(file)
    try:
        return _parse(text, smap), smap
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, file) from None
