"""One tpu-perf build becoming recipe data: the bookkeeping shared by the NNTC and tpu-mlir
translations (what was translated, what was not and why, what was ignored)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bmbuild.importers.tpu_perf.command import CommandLine, Flag, parse_bool, parse_command, parse_shapes
from bmbuild.fileinfo import is_lfs_pointer
from bmbuild.importers.tpu_perf.tree import Build, Scope, Zoo, dict_override

TARGETS = ("BM1684", "BM1684X")
CHIPS = {"bm1684": "BM1684", "bm1684x": "BM1684X"}
MODEL_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".torchscript": "torchscript",
                  ".prototxt": "Caffe", ".caffemodel": "Caffe", ".tflite": "TFLite", ".pb": "TensorFlow",
                  ".pdmodel": "PaddlePaddle", ".cfg": "Darknet", ".json": "MXNet"}


class Skip(Exception):
    """This config cannot become a recipe (the reason is reported)."""


@dataclass
class Translation:
    """One model config as a recipe, with what did not carry over."""

    config: Path
    name: str
    recipe: dict[str, Any] | None = None
    untranslated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hint: dict[str, Any] | None = None      # int8 settings that could not be built as imported
    skipped: str | None = None
    ignored: bool = False                   # skipped on purpose by the config itself

    @property
    def status(self) -> str:
        if self.skipped is not None:
            return "ignored" if self.ignored else "skipped"
        return "partial" if self.untranslated else "imported"


class Translator:
    """Collects the recipe of one build and what could not be translated."""

    def __init__(self, build: Build, zoo: Zoo, recipe_dir: Path):
        self.build, self.zoo, self.recipe_dir = build, zoo, recipe_dir
        self.base_name = str(build.config["name"])
        self.recipe: dict[str, Any] = {}
        self.untranslated: list[str] = []
        self.notes: list[str] = []
        self.hint: dict[str, Any] = {}
        self.commands: dict[str, CommandLine] = {}

    # --- bookkeeping ----------------------------------------------------------------------------
    def lose(self, what: str, why: str) -> None:
        append(self.untranslated, f"{what}: {why}")

    def note(self, what: str, why: str) -> None:
        append(self.notes, f"{what}: {why}")

    def set(self, dotted: str, value: Any) -> None:
        parts = dotted.split(".")
        node = self.recipe
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.recipe
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    # --- commands -------------------------------------------------------------------------------
    def command(self, key: str, raw: Any = None, prefix: str = "",
                loop: dict[str, Any] | None = None) -> CommandLine | None:
        """The config's command string `key`, expanded (with a loop's settings on top, as tpu-perf
        expands fp_compile_options / bmnetu_options once per fp_loops / int8_loops entry) and split."""
        raw = self.build.config.get(key) if raw is None else raw
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise Skip(f"{key}: expected a command string, got {type(raw).__name__}")
        scope = self.build.scope
        if loop:
            scope = Scope(dict_override(self.build.config, loop), scope.globals, scope.markers)
            scope.used = self.build.scope.used
        command = parse_command(str(scope.expand(prefix + raw)), key)
        self.commands[key] = command
        return command

    def apply(self, command: CommandLine, handlers: dict[str, Callable[[Flag], None]],
              positionals: int = 0) -> None:
        """Run each flag's handler; a flag without one is untranslated."""
        for env in command.env:
            self.lose(f"{command.key} {env}", "compiler environment variables have no recipe key")
        for word in command.positionals[positionals:]:
            self.lose(f"{command.key} {word}", "unexpected argument")
        for flag in command.flags:
            handler = handlers.get(flag.name)
            if handler is None:
                self.lose(flag.describe(), f"no bmbuild equivalent for {command.tool} --{flag.name}")
                continue
            try:
                handler(flag)
            except ValueError as exc:
                self.lose(flag.describe(), str(exc))

    def ignore(self, why: str | None = None) -> Callable[[Flag], None]:
        """A handler for flags with no effect on the bmodels: noted when `why` is given."""
        def handle(flag: Flag) -> None:
            if why:
                self.note(flag.describe(), why)
        return handle

    # --- values shared by both toolchains --------------------------------------------------------
    def path(self, value: str) -> str:
        """A recipe path: `${var}` paths as they are, others relative to the recipe's folder."""
        if "${" in value:
            return value
        path = Path(value) if os.path.isabs(value) else Path(self.build.config["home"]) / value
        return os.path.relpath(path, self.recipe_dir)

    def source(self, framework: str, model: str, what: str) -> None:
        if framework not in ("onnx", "torchscript"):
            raise Skip(f"unsupported framework: {framework} ({what})")
        self.set("source", {"framework": framework, "model": self.path(model)})
        file = Path(model) if "${" not in model else None
        if file is not None and not file.exists():
            self.note("model", f"{model} is not present (a Git LFS file not fetched?): "
                               "`bmbuild validate` fails until it is")
        elif file is not None and file.is_file() and is_lfs_pointer(file):
            self.note("model", f"{model} is a Git LFS pointer: run `git lfs pull` before building")

    def shapes(self, text: str, what: str) -> None:
        shapes = parse_shapes(text)
        current = self.get("shapes")
        if current is None:
            self.set("shapes", shapes)
        elif [s[1:] for s in current] != [s[1:] for s in shapes]:
            self.lose(what, f"shapes {text} differ from {_shapes_text(current)}")

    def target(self, value: str, what: str) -> None:
        target = CHIPS.get(value.lower(), value.upper())
        if target not in TARGETS:
            raise Skip(f"unsupported target {value} ({what}): bmbuild builds for {', '.join(TARGETS)}")
        current = self.recipe.get("target")
        if current is None:
            self.recipe["target"] = target
        elif current != target:
            self.lose(what, f"target {target} differs from {current} used by the other commands")

    def net_name(self, flag: Flag) -> None:
        if flag.value != self.base_name:
            self.lose(flag.describe(), f"bmbuild names the net after the recipe ({self.base_name})")

    def int_value(self, flag: Flag, dotted: str, choices: tuple[int, ...] | None = None,
                  minimum: int | None = None) -> None:
        try:
            value = int(str(flag.value))
        except ValueError:
            raise ValueError(f"not an integer: {flag.value!r}") from None
        if choices is not None and value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        if minimum is not None and value < minimum:
            raise ValueError(f"expected at least {minimum}")
        self.set(dotted, value)

    def bool_value(self, flag: Flag, dotted: str) -> None:
        self.set(dotted, parse_bool(flag.value))


def append(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _shapes_text(shapes: list[list[int]]) -> str:
    return ",".join("[" + ",".join(map(str, s)) + "]" for s in shapes)


def add_layers(t: Translator, text: str) -> None:
    """Append comma-separated layer names to int8.fp32_layers (each once)."""
    layers = t.get("int8.fp32_layers", [])
    for layer in (item.strip() for item in text.split(",")):
        if layer and layer not in layers:
            layers.append(layer)
    t.set("int8.fp32_layers", layers)
