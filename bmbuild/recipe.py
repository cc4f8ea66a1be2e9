"""Recipes: pydantic models in the vendor's vocabulary, loaded from YAML with line numbers.

A recipe names one model and how to turn it into bmodels. Every user mistake becomes a
`RecipeError` naming the file, the line and the key, never a traceback.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bmbuild.calib.config import CalibrationConfig
from bmbuild.errors import RecipeError
from bmbuild.yamlsource import KeyPath, SourceMap

RECIPE_SUFFIXES = (".yaml", ".yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Weights(_Strict):
    """A weights file: a plain state_dict, or a checkpoint dict holding one under `key`."""

    path: Path = Field(description="Weights file (.pt/.pth/.pth.tar), relative to the recipe.")
    key: str | None = Field(None, description="Checkpoint key holding the state_dict, e.g. 'state_dict' or 'model_state_dict'.")
    strip_prefix: str | None = Field(None, description="Prefix removed from every key, e.g. 'module.' from DataParallel.")


class Source(_Strict):
    """Where the model comes from (bmnetp takes a traced model; ONNX sources start at compile)."""

    framework: Literal["pytorch", "torchscript", "onnx"] = Field(description="Source framework.")
    model: str = Field(description="pytorch: 'path/to/file.py:callable'; torchscript/onnx: path to the .pt/.onnx file.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the model callable.")
    weights: Weights | None = Field(None, description="Optional weights loaded with torch.load(weights_only=True), strict keys.")

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_framework(self) -> "Source":
        if self.framework == "pytorch":
            if ":" not in self.model:
                raise ValueError("a pytorch model is written 'path/to/file.py:callable'")
        elif self.kwargs or self.weights:
            raise ValueError(f"kwargs and weights apply only to framework 'pytorch', not {self.framework!r}")
        return self

    @property
    def model_file(self) -> Path:
        return Path(self.model.rsplit(":", 1)[0]) if self.framework == "pytorch" else Path(self.model)

    @property
    def callable_name(self) -> str | None:
        return self.model.rsplit(":", 1)[1] if self.framework == "pytorch" else None


class Tolerance(_Strict):
    """Accuracy gate of a comparison, as tpu-mlir's `--tolerance cos,euclid` plus optional extras."""

    cos: float = Field(0.99, ge=-1, le=1, description="Minimum cosine similarity.")
    euclid: float = Field(0.99, le=1, description="Minimum euclidean similarity 1 - |a-b| / |(a+b)/2|.")
    sqnr: float | None = Field(None, description="Minimum SQNR in dB.")
    max_abs: float | None = Field(None, ge=0, description="Maximum absolute error.")
    top1: float | None = Field(None, ge=0, le=1, description="Minimum top-1 agreement (classifier outputs).")


class InputSpec(_Strict):
    name: str = Field(description="Input tensor name.")
    dtype: Literal["float32", "float16", "int32", "int64"] = "float32"


class Fp32(_Strict):
    """bmnetp options (fp32 compile) and the comparison against the source model."""

    opt: Literal[0, 1, 2] = Field(1, description="Optimisation level (bmnetp --opt).")
    dyn: bool = Field(False, description="Dynamic shapes (bmnetp --dyn); dynamic batch in ONNX.")
    cmp: bool = Field(True, description="Compare the compiled model against the source (bmnetp --cmp).")
    enable_profile: bool = Field(False, description="bmnetp --enable_profile.")
    opset: int = Field(13, ge=7, le=21, description="ONNX opset of the reference toolchain's export.")
    cmp_samples: int = Field(3, ge=1, description="Seeded random inputs compared per batch size.")
    seed: int = Field(0, description="Seed of the comparison inputs.")
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate on fp32 vs source.")


def _int8_tolerance() -> Tolerance:
    # tpu-mlir documents 0.85,0.45 (cos, euclid) for int8 against fp32.
    return Tolerance(cos=0.85, euclid=0.45)


class Int8(_Strict):
    """bmnetu options (int8 compile), layers kept in float, and the int8-vs-fp32 gate."""

    opt: Literal[0, 1, 2] = Field(2, description="Optimisation level (bmnetu -opt).")
    dyn: bool = Field(False, description="Dynamic shapes (bmnetu -dyn).")
    cmp: bool = Field(True, description="Compare int8 against fp32 on held-out samples.")
    enable_profile: bool = Field(False, description="bmnetu -enable_profile (NNTC).")
    per_channel: bool = Field(True, description="Per-channel symmetric int8 weights.")
    fp32_layers: list[str] = Field(default_factory=list, description="Layers kept in float (the vendor's -fpfwd_outputs).")
    cmp_samples: int = Field(16, ge=1, description="Held-out samples compared int8 vs fp32.")
    tolerance: Tolerance = Field(default_factory=_int8_tolerance, description="Gate on int8 vs fp32.")


class Eval(_Strict):
    """Accuracy on a labelled set, fp32 and int8, with a maximum allowed drop."""

    data: Path = Field(description="A .npz holding preprocessed inputs and integer labels.")
    x_key: str = "x"
    y_key: str = "y"
    metric: Literal["top1", "top5"] = "top1"
    max_drop: float = Field(1.0, ge=0, description="Largest allowed accuracy drop int8 vs fp32, in points.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N samples.")


class Recipe(_Strict):
    """One model and how to build it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Net name (bmnetp --net_name); also the build folder.")
    description: str | None = None
    toolchain: Literal["auto", "reference", "nntc"] = Field("auto", description="auto: NNTC when installed, else reference.")
    source: Source
    shapes: list[list[int]] = Field(min_length=1, description="Input shapes, batch first, e.g. [[1,3,224,224]].")
    inputs: list[InputSpec] | None = Field(None, description="Input names and dtypes, one per shape.")
    target: Literal["BM1684", "BM1684X"] = "BM1684"
    prec: Literal["FP32", "INT8"] = Field("FP32", description="FP32 builds trace+compile_fp32; INT8 adds calibrate, quantize, compile_int8.")
    batch_sizes: list[int] | None = Field(None, min_length=1, description="Batch sizes compiled (default: the batch of shapes).")
    fp32: Fp32 = Field(default_factory=Fp32)
    calibration: CalibrationConfig | None = None
    int8: Int8 = Field(default_factory=Int8)
    eval: Eval | None = None
    variants: dict[str, list[Any]] | list[dict[str, Any]] | None = Field(
        None, description="Expand into several builds: {dotted.key: [values]} is a matrix "
                          "(name_<value>...); a list of {dotted.key: value, suffix: s} gives explicit variants.")

    @field_validator("shapes")
    @classmethod
    def _positive_dims(cls, shapes: list[list[int]]) -> list[list[int]]:
        for shape in shapes:
            if not shape or any(d <= 0 for d in shape):
                raise ValueError(f"every dimension must be a positive integer, got {shape}")
        return shapes

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None:
            if any(b <= 0 for b in sizes):
                raise ValueError("batch sizes must be positive")
            if len(set(sizes)) != len(sizes):
                raise ValueError("batch sizes must be distinct")
        return sizes

    @model_validator(mode="after")
    def _check_consistency(self) -> "Recipe":
        if self.inputs is not None and len(self.inputs) != len(self.shapes):
            raise ValueError(f"inputs names {len(self.inputs)} inputs but shapes has {len(self.shapes)}")
        if self.prec == "INT8" and self.calibration is None:
            raise ValueError("prec INT8 needs a 'calibration' section")
        return self

    # --- derived values, used by stages and toolchains ---------------------------------
    @property
    def resolved_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes) if self.batch_sizes else [self.shapes[0][0]]

    @property
    def input_specs(self) -> list[InputSpec]:
        if self.inputs is not None:
            return list(self.inputs)
        names = ["input"] if len(self.shapes) == 1 else [f"input{i}" for i in range(len(self.shapes))]
        return [InputSpec(name=n) for n in names]

    def shapes_for_batch(self, batch: int) -> list[list[int]]:
        return [[batch, *shape[1:]] for shape in self.shapes]


class LoadedRecipe(BaseModel):
    """A validated recipe plus where it came from (for messages and relative paths)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipe: Recipe
    file: Path
    source_map: SourceMap

    @property
    def name(self) -> str:
        return self.recipe.name

    def error(self, message: str, key: KeyPath, hint: str | None = None) -> RecipeError:
        """A RecipeError pointing at `key` where it was written (recipe or defaults file)."""
        return RecipeError(message, self.source_map.file_of(key), self.source_map.line_of(key),
                           _dotted(key), hint)


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_path(data: Any, loc: tuple[Any, ...]) -> KeyPath:
    """Keep the parts of a pydantic error location that exist in the YAML data."""
    path: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(current, dict) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            path.append(part)
            current = current[part]
        elif isinstance(current, dict) and isinstance(part, str) and part not in current and loc[-1] == part:
            path.append(part)  # a missing or unknown key: still name it
    return tuple(path)


def _fields_at(model: type[BaseModel], path: KeyPath) -> list[str]:
    """Names of the fields allowed at `path` (for 'did you mean')."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(error: dict[str, Any], data: Any) -> tuple[KeyPath, str, str | None]:
    path = _data_path(data, error["loc"])
    kind = error["type"]
    hint = None
    if kind == "extra_forbidden":
        allowed = _fields_at(Recipe, path[:-1])
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        message = "unknown key"
        hint = f"did you mean '{close[0]}'?" if close else (f"allowed: {', '.join(allowed)}" if allowed else None)
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
        if "input" in error and not isinstance(error["input"], (dict, list)):
            message += f" (got {error['input']!r})"
    return path, message, hint


def _resolve_paths(model: BaseModel, base: Path) -> None:
    """Make every Path field absolute, relative to the recipe's folder."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            object.__setattr__(model, name, (base / value).resolve())
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)


def _check_files(loaded: LoadedRecipe) -> None:
    recipe, base = loaded.recipe, loaded.file.parent
    model_file = (base / recipe.source.model_file).resolve()
    if not model_file.is_file():
        raise loaded.error(f"model file not found: {model_file}", ("source", "model"))
    if recipe.source.framework == "pytorch":
        name = recipe.source.callable_name or ""
        if name not in _top_level_names(model_file):
            raise loaded.error(f"no callable {name!r} defined at the top level of {model_file.name}",
                               ("source", "model"))
    if recipe.source.weights and not recipe.source.weights.path.is_file():
        raise loaded.error(f"weights file not found: {recipe.source.weights.path}", ("source", "weights"))
    if recipe.calibration and not recipe.calibration.data.exists():
        raise loaded.error(f"calibration data not found: {recipe.calibration.data}", ("calibration", "data"))
    if recipe.eval and not recipe.eval.data.is_file():
        raise loaded.error(f"evaluation data not found: {recipe.eval.data}", ("eval", "data"))


def _top_level_names(file: Path) -> set[str]:
    """Names a Python file defines at the top level, found without importing it (no torch)."""
    try:
        tree = ast.parse(file.read_bytes(), str(file))  # bytes: honours PEP 263 coding cookies
    except (SyntaxError, ValueError) as exc:
        raise RecipeError(f"syntax error in model file: {getattr(exc, 'msg', exc)}", file,
                          getattr(exc, "lineno", None)) from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign,)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def parse_recipe(data: Any, file: Path, source_map: SourceMap) -> LoadedRecipe:
    """Validate already-loaded YAML data as a recipe of `file`."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of keys to values", file, 1)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = [
            RecipeError(message, source_map.file_of(path), source_map.line_of(path), _dotted(path) or None, hint)
            for path, message, hint in (_describe(e, data) for e in exc.errors())
        ]
        raise RecipeErrors(errors) from None
    _resolve_paths(recipe, file.parent.resolve())
    loaded = LoadedRecipe(recipe=recipe, file=file, source_map=source_map)
    _check_files(loaded)
    return loaded


def load_recipe_file(file: str | Path, root: Path | None = None,
                     variables: dict[str, str] | None = None) -> list[LoadedRecipe]:
    """Every build one recipe file stands for (defaults merged, variables and variants expanded)."""
    from bmbuild.compose import compose

    file = Path(file)
    return [parse_recipe(data, file, smap)
            for data, smap in compose(file, root or file.parent, variables or {})]


def load_recipe(file: str | Path) -> LoadedRecipe:
    """Load and validate a recipe file that stands for exactly one build."""
    loaded = load_recipe_file(file)
    if len(loaded) != 1:
        raise RecipeError(f"expands into {len(loaded)} variants; name one of them", file)
    return loaded[0]


def find_recipe_files(paths: list[str | Path]) -> list[Path]:
    """Recipe files named directly, or found below folders (sorted, so builds are stable)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in RECIPE_SUFFIXES
                                and p.is_file() and not _is_support_file(p)))
        elif path.is_file():
            found.append(path)
        else:
            raise RecipeError("no such recipe file or folder", path)
    if not found:
        raise RecipeError("no recipes found", ", ".join(map(str, paths)))
    return found


def _is_support_file(path: Path) -> bool:
    """YAML files in a recipe tree that are not recipes themselves."""
    return path.name in ("defaults.yaml", "defaults.yml", "bmbuild.yaml", "bmbuild.yml")


def load_recipes(paths: list[str | Path], root: Path | None = None,
                 variables: dict[str, str] | None = None) -> list[LoadedRecipe]:
    """Load every recipe below `paths`; reports all bad recipes at once; names must be unique."""
    loaded: list[LoadedRecipe] = []
    errors: list[RecipeError] = []
    for file in find_recipe_files(paths):
        try:
            loaded.extend(load_recipe_file(file, root, variables))
        except RecipeErrors as exc:
            errors.extend(exc.errors)
        except RecipeError as exc:
            errors.append(exc)
    seen: dict[str, Path] = {}
    for item in loaded:
        if item.name in seen:
            errors.append(item.error(f"name {item.name!r} is also used by {seen[item.name]}", ("name",)))
        seen.setdefault(item.name, item.file)
    if errors:
        raise RecipeErrors(errors)
    return loaded


class RecipeErrors(RecipeError):
    """Several recipe errors, reported together, one per line."""

    def __init__(self, errors: list[RecipeError]):
        self.errors = errors
        Exception.__init__(self, "\n".join(e.render() for e in errors))
        self.message, self.file, self.line, self.key, self.hint = str(self), None, None, None, None

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)
