"""Reading a tpu-perf model zoo the way tpu-perf reads it (sophgo/tpu-perf, python/tpu_perf/buildtree.py).

- The root `config.yaml` holds global variables (dataset folders, ...). Its block named after the
  target (`BM1684:`) overrides it, then `$(home)` and the other globals are expanded once, shallowly.
- Every leaf folder holds one or more `*config.yaml` model configs. A config's blocks named after the
  target (`BM1684:` or `BM1684/BM1684X:`) override its keys, then the nearest ancestor `config.yaml`
  below the root (the "context") overrides the result. A key written `+key` appends to a list.
- `shapes: [[...], ...]` gives one build per shape, named `<name>-1x3x224x224`, with `$(shape)`,
  `$(shape_key)` and `$(shape_param)` set; `gops` then has one value per shape.
- `$(var)` is a key of the model config or else of the global config, expanded recursively; a
  string that is only `$(var)` becomes that value whatever its type. tpu-perf sets `$(home)` (the
  config's folder), `$(workdir)` (its output folder), `$(root)`, `$(target)` (lower-case for tpu-mlir).

Here the global variables that become bmbuild workspace `vars` expand to `${name}` instead of their
value, so imported recipes name them like tpu-perf configs do. Problems become `ConfigError`s, which
the importer reports per config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

CONFIG_SUFFIX = "config.yaml"
NNTC_FIELDS = ("fp_compile_options", "time_only_cali", "cali", "bmnetu_options")
MLIR_FIELDS = ("mlir_transform", "deploy", "mlir_calibration")
TARGETS = ("BM1684", "BM1684X", "BM1688", "CV186X")    # tpu_perf.build --target choices
RESERVED_GLOBALS = ("root", "outdir", "target", "devices")  # set by tpu-perf, not by the root config
TPU_PERF_SETTINGS = ("iter_opt", "data_dir", "default_cases")  # root keys that are not dataset variables
ROOT_VAR = "tpu_perf_root"                                # bmbuild var for tpu-perf's $(root)
OUTPUT_DIR = "output"                                     # tpu-perf's default --outdir
WHOLE_VAR = re.compile(r"^\$\(([a-z0-9_]+)\)$")
PART_VAR = re.compile(r"\$\(([\w_]+)\)")


class ConfigError(Exception):
    """A config tpu-perf itself would reject (or this importer cannot read)."""


def load_config(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def dict_override(base: dict[str, Any], over: Any) -> dict[str, Any]:
    """tpu_perf.util.dict_override: keys of `over` replace those of `base`; `+key` appends a list."""
    if not isinstance(over, dict):
        raise ConfigError(f"an override block must be a mapping, got {over!r}")
    result = dict(base)
    for key, value in over.items():
        if isinstance(key, str) and key.startswith("+"):
            real = key[1:]
            inherited = base.get(real, [])
            if not isinstance(inherited, list) or not isinstance(value, list):
                raise ConfigError(f"'{key}' appends to a list, but {real} or the appended value is not a list")
            result[real] = inherited + value
        else:
            result[key] = value
    return result


def is_target_key(key: Any) -> bool:
    """A per-target block: `BM1684X:` or `BM1684/BM1684X:`."""
    return isinstance(key, str) and all(part in TARGETS for part in key.split("/"))


def apply_target(config: dict[str, Any], target: str) -> dict[str, Any]:
    """Merge the blocks written for `target` (slash lists first, then the plain one), as tpu-perf."""
    keys = [k for k in config if isinstance(k, str) and "/" in k and target in k.split("/")]
    if target in config:
        keys.append(target)
    for key in keys:
        block = config.pop(key)
        config = dict_override(config, block)
    return config


class Scope:
    """`$(var)` lookup for one build: the model config first, then the globals (tpu-perf's order)."""

    def __init__(self, config: dict[str, Any], globals_: dict[str, Any], markers: dict[str, str]):
        self.config = config
        self.globals = globals_
        self.markers = markers          # globals written as bmbuild `${var}` rather than their value
        self.used: set[str] = set()     # every variable a translated value referred to

    def lookup(self, var: str) -> Any:
        self.used.add(var)
        value = self.config.get(var)
        if value:                      # tpu-perf: config.get(var) or global_config.get(var)
            return value
        if var in self.markers:
            return self.markers[var]
        return self.globals.get(var)

    def expand(self, value: Any, stack: frozenset[str] = frozenset()) -> Any:
        """tpu_perf BuildTree.expand_variables (recursive), raising ConfigError like it raises."""
        if not isinstance(value, str):
            return value
        whole = WHOLE_VAR.match(value)
        if whole:
            return self.expand(self._get(whole.group(1), value, stack), stack | {whole.group(1)})
        out = value
        for match in PART_VAR.finditer(value):
            var = match.group(1)
            found = self.expand(self._get(var, value, stack), stack | {var})
            out = out.replace(match.group(0), str(found))
        return out

    def _get(self, var: str, text: str, stack: frozenset[str]) -> Any:
        if var in stack:
            raise ConfigError(f"cyclic variable $({var}) in {text!r}")
        value = self.lookup(var)
        if value is None:
            raise missing_variable(var, text, self.config)
        return value


def missing_variable(var: str, text: str, config: dict[str, Any]) -> ConfigError:
    """tpu-perf's error for $(var) without a value: undefined, or set to an empty value (which
    `config.get(var) or global_config.get(var)` skips)."""
    if config.get(var) is not None:
        return ConfigError(f"variable $({var}) in {text!r} is empty ({config[var]!r}): tpu-perf takes an empty "
                           "value for no value and stops")
    return ConfigError(f"unknown variable $({var}) in {text!r}")


@dataclass
class Zoo:
    """A tpu-perf root: its folder, its global config (expanded) and the variables it defines."""

    root: Path
    target: str
    root_file: Path | None
    globals: dict[str, Any]
    variables: dict[str, str]            # bmbuild vars: name -> value (ROOT_VAR included)
    root_keys: dict[str, Any] = field(default_factory=dict)   # the root config as written

    @property
    def markers(self) -> dict[str, str]:
        marks = {name: "${" + name + "}" for name in self.variables if name != ROOT_VAR}
        marks["root"] = "${" + ROOT_VAR + "}"
        return marks


@dataclass
class Build:
    """One tpu-perf build of one model config (one per entry of `shapes`)."""

    file: Path
    mode: str                  # "nntc" or "mlir"
    name: str                  # tpu-perf's output name: name, or name-<shape key>
    config: dict[str, Any]
    scope: Scope
    shape: list[list[int]] | None = None
    shape_key: str | None = None


def root_config_file(folder: Path) -> Path | None:
    """`config.yaml` of a tpu-perf root; else a lone `*config.yaml` without a model name (a root
    config kept under another name, as in a folder of example configs)."""
    plain = folder / CONFIG_SUFFIX
    if plain.is_file():
        return plain
    nameless = [file for file in sorted(folder.glob(f"*{CONFIG_SUFFIX}")) if is_root_config(file)]
    return nameless[0] if len(nameless) == 1 else None


def is_root_config(file: Path) -> bool:
    try:
        data = load_config(file)
    except ConfigError:
        return False
    return isinstance(data, dict) and "name" not in data and not any(f in data for f in NNTC_FIELDS + MLIR_FIELDS)


def find_root(path: Path) -> Path:
    """The tpu-perf root of `path`: the topmost folder at or above it (not above a git checkout's
    top) whose root config names no model; `path` itself when there is none."""
    path = path.resolve()
    found = None
    for folder in (path, *path.parents):
        file = root_config_file(folder)
        if file is not None and is_root_config(file):
            found = folder
        if (folder / ".git").exists():
            break
    return found or path


def open_zoo(root: Path, target: str) -> Zoo:
    """The global config of `root` as BuildTree.__init__ makes it."""
    root = root.resolve()
    file = root_config_file(root)
    data: Any = load_config(file) if file else {}
    if file and not is_root_config(file):
        file, data = None, {}               # a model config in the root folder: no globals
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the root config must be a mapping")
    written = dict(data)
    data = dict(data)
    data.update(root=str(root), outdir=str(root / OUTPUT_DIR), target=target, devices=[0])
    if target in data:
        data = dict_override({k: v for k, v in data.items() if k != target}, data[target])
    scope = Scope({"home": str(root)}, data, {})
    globals_ = {key: _shallow(scope, value) for key, value in data.items()}
    variables = {ROOT_VAR: str(root)}
    for key, value in globals_.items():
        if key in RESERVED_GLOBALS or key in TPU_PERF_SETTINGS or is_target_key(key) or not isinstance(value, str):
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            continue
        try:
            variables[key] = str(Scope({}, globals_, {}).expand(value))
        except ConfigError:
            variables[key] = value
    return Zoo(root, target, file, globals_, variables, written)


def _shallow(scope: Scope, value: Any) -> Any:
    """expand_all_variables(..., shallow=True, no_except=True): one level, unknown names kept."""
    if isinstance(value, dict):
        return {k: _shallow(scope, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shallow(scope, v) for v in value]
    if not isinstance(value, str):
        return value
    whole = WHOLE_VAR.match(value)
    if whole:
        found = scope.lookup(whole.group(1))
        return value if found is None else found
    out = value
    for match in PART_VAR.finditer(value):
        found = scope.lookup(match.group(1))
        if found is not None:
            out = out.replace(match.group(0), str(found))
    return out


def config_files(path: Path, zoo: Zoo) -> list[Path]:
    """The model configs below `path`, as tpu-perf's walk finds them: the `*config.yaml` files of
    folders none of whose subfolders hold any (hidden folders skipped; the root config excluded)."""
    return [f for f in _walk(path.resolve()) if f != zoo.root_file]


def _walk(path: Path) -> Iterator[Path]:
    if not path.is_dir() or path.name.startswith("."):
        return
    found = False
    for child in sorted(path.iterdir()):
        for item in _walk(child):
            found = True
            yield item
    if not found:
        yield from sorted(p for p in path.iterdir() if p.name.endswith(CONFIG_SUFFIX) and p.is_file())


def context_of(file: Path, zoo: Zoo) -> dict[str, Any]:
    """The nearest ancestor config.yaml strictly between the model's folder and the root."""
    folder = file.parent
    for parent in folder.parents:
        if parent == zoo.root or zoo.root not in parent.parents:
            break
        candidate = parent / CONFIG_SUFFIX
        if candidate.is_file():
            data = load_config(candidate) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{candidate}: a config must be a mapping")
            data = apply_target(dict(data), zoo.target)
            return _shallow(Scope({"home": str(parent)}, zoo.globals, {}), data)
    return {}


def read_builds(file: Path, zoo: Zoo) -> tuple[list[Build], dict[str, Any], str | None]:
    """The builds of one model config; with the config as written and why there are none (if so)."""
    raw = load_config(file)
    if not raw:
        return [], {}, "empty config"
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping")
    written = dict(raw)
    if raw.get("ignore"):
        return [], written, "ignore: true"
    config = apply_target(dict(raw), zoo.target)
    config = dict_override(config, context_of(file, zoo))
    modes = [mode for mode, fields in (("nntc", NNTC_FIELDS), ("mlir", MLIR_FIELDS))
             if any(f in config for f in fields)]
    if not modes:
        others = sorted(k for k in config if is_target_key(k))
        hint = f" (blocks for {', '.join(others)} only)" if others else ""
        return [], written, f"no NNTC or tpu-mlir commands for {zoo.target}{hint}"
    if "name" not in config:
        raise ConfigError("no 'name'")
    builds = []
    for mode in modes:
        suffix = "-mlir" if mode == "mlir" and len(modes) > 1 else ""
        builds += _mode_builds(file, zoo, dict(config), mode, suffix)
    return builds, written, None


def _mode_builds(file: Path, zoo: Zoo, config: dict[str, Any], mode: str, suffix: str) -> list[Build]:
    if mode == "mlir":
        config["target"] = zoo.target.lower()
    used: set[str] = set()
    config = {key: _whole(value, config, zoo, used) for key, value in config.items()}
    shapes = config.get("shapes", [None])
    gops = config.get("gops", [None])
    gops = gops if isinstance(gops, list) else [gops]
    if not isinstance(shapes, list) or len(shapes) != len(gops):
        raise ConfigError("gops must have one value per entry of shapes")
    builds = []
    for shape, gop in zip(shapes, gops, strict=True):
        build = dict(config)
        name = str(config["name"]) + suffix
        if gop is not None:
            build["gops"] = gop
        nested, key = None, None
        if shape is not None:
            nested, key, param = shape_key_and_param(shape)
            name = f"{name}-{key}"
            build.update(shape=shape, shape_key=key, shape_param=param)
        build.update(home=str(file.parent.resolve()), workdir=str(zoo.root / OUTPUT_DIR / name), num_core=1)
        build.setdefault("bmnetu_batch_sizes", [1])
        scope = Scope(build, zoo.globals, zoo.markers)
        scope.used |= used
        builds.append(Build(file, mode, name, build, scope, nested, key))
    return builds


def _whole(value: Any, config: dict[str, Any], zoo: Zoo, used: set[str]) -> Any:
    """expand_all_whole_variables(shallow=True): strings that are just `$(var)` take its value."""
    if isinstance(value, dict):
        return {k: _whole(v, config, zoo, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v, config, zoo, used) for v in value]
    if isinstance(value, str):
        whole = WHOLE_VAR.match(value)
        if whole:
            used.add(whole.group(1))
            found = Scope(config, zoo.globals, zoo.markers).lookup(whole.group(1))
            if found is None:
                raise missing_variable(whole.group(1), value, config)
            return found
    return value


def shape_key_and_param(shape: Any) -> tuple[list[list[int]], str, str]:
    """tpu-perf's shape_key_and_param: ([[1,3,224,224]], '1x3x224x224', '[1,3,224,224]')."""
    if not isinstance(shape, list) or not shape:
        raise ConfigError(f"a shape must be a list, got {shape!r}")
    nested = shape if isinstance(shape[0], list) else [shape]
    for dims in nested:
        if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise ConfigError(f"a shape must be a list of integers, got {shape!r}")
    param = ",".join("[" + ",".join(str(d) for d in dims) + "]" for dims in nested)
    key = "-".join("x".join(str(d) for d in dims) for dims in nested)
    return [list(d) for d in nested], key, param
