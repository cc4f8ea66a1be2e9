"""Recipes: pydantic models in the vendor's vocabulary, loaded from YAML with line numbers.

A recipe names one model and how to turn it into bmodels. Every user mistake becomes a
`RecipeError` naming the file, the line and the key, never a traceback.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from bmbuild.calib.config import CalibrationConfig
from bmbuild.errors import RecipeError
from bmbuild.fileinfo import is_lfs_pointer, lfs_message
from bmbuild.toolchain_registry import REGISTRY
from bmbuild.yamlsource import KeyPath, SourceMap, dotted

TOOLCHAIN_NAMES = ("auto", *REGISTRY)  # Literal[...] of these: recipe validation and the schema follow the registry

RECIPE_SUFFIXES = (".yaml", ".yml")
MAX_NAME = 100  # the name is a folder and a file stem; stays far below the usual 255-byte limit


class KeyedValueError(ValueError):
    """A check across fields that knows which key to blame (pydantic reports such errors at the
    model itself, with no key)."""

    def __init__(self, message: str, key: KeyPath):
        super().__init__(message)
        self.key = key


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
    # JSON values only: they are hashed into the trace key (a key of 1 next to "a" cannot be sorted)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict, description="Keyword arguments for the model callable.")
    weights: Weights | None = Field(None, description="Optional weights loaded with torch.load(weights_only=True), "
                                    "strict keys; a string is short for {path: ...}.",
                                    json_schema_extra=lambda schema: schema["anyOf"].insert(
                                        1, {"type": "string", "description": "Weights file, relative to the recipe."}))

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


def default_input_names(count: int) -> list[str]:
    """The names of inputs a recipe does not name: `input`, or `input0`, `input1`, ..."""
    return ["input"] if count == 1 else [f"input{i}" for i in range(count)]


InputDtype = Literal["float32", "float16", "int32", "int64"]
INPUT_DTYPES: tuple[str, ...] = get_args(InputDtype)  # the element types a recipe can feed


class InputSpec(_Strict):
    """One model input: its name and dtype, which axis of its shape is the batch, or a constant."""

    name: str = Field(description="Input tensor name.")
    dtype: InputDtype = Field("float32", description="Input element type.")
    batch_axis: int | None = Field(
        0, ge=0, description="Axis of this input's shape that is the batch (set to each batch size); null: the "
                             "input has no batch axis (a recurrent state shared by the batch, a scalar). Default 0, "
                             "and null for a scalar (shape []).")
    value: JsonValue = Field(
        None, description="A constant fed to this input everywhere (tracing, comparisons, calibration, evaluation) "
                          "instead of random or calibration data: a number, broadcast to the input's shape (e.g. a "
                          "sample rate 16000, or 0 for an initial state), or nested lists broadcastable to it.")

    @field_validator("value")
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        if value is not None:
            value_shape(value)  # raises ValueError for anything but numbers and regular nested lists
        return value

    def key_dump(self) -> dict[str, Any]:
        """What an action key holds of this input: name and dtype, plus the batch axis and the value
        only when they differ from the defaults (so recipes that never set them keep their keys)."""
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype}
        if self.batch_axis != 0:
            data["batch_axis"] = self.batch_axis
        if self.value is not None:
            data["value"] = self.value
        return data


def value_shape(value: Any) -> tuple[int, ...]:
    """The shape of a constant (a number, or regular nested lists of numbers); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        raise ValueError(f"a constant value is a number or nested lists of numbers, not {type(value).__name__}")
    if not isinstance(value, list):
        if not math.isfinite(value):
            raise ValueError(f"a constant value must be finite, not {value}")
        return ()
    if not value:
        raise ValueError("a constant value cannot be an empty list")
    shapes = {value_shape(item) for item in value}
    if len(shapes) != 1:
        raise ValueError("a constant value's nested lists must all have the same shape")
    return (len(value), *shapes.pop())


def _flat_values(value: Any) -> list[Any]:
    return [v for item in value for v in _flat_values(item)] if isinstance(value, list) else [value]


class Fp32(_Strict):
    """bmnetp options (fp32 compile) and the comparison against the source model."""

    opt: Literal[0, 1, 2] = Field(1, description="Optimisation level (bmnetp --opt).")
    dyn: bool = Field(False, description="Dynamic shapes (bmnetp --dyn); dynamic batch in ONNX.")
    cmp: bool = Field(True, description="Compare the compiled model against the source (bmnetp --cmp).")
    enable_profile: bool = Field(False, description="bmnetp --enable_profile.")
    # 17: attention exports (scaled_dot_product_attention needs 14; 13 failed every timm transformer),
    # LayerNorm is one op, and tpu-mlir takes it from the legacy exporter (it rejects dynamo's 18)
    opset: int = Field(17, ge=7, le=21, description="ONNX opset of the export (legacy TorchScript exporter) "
                                                    "for the toolchains that compile ONNX.")
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
    asymmetric: bool | Literal["auto"] = Field(
        "auto", description="Asymmetric int8 activations: a zero point per tensor from the calibration's min and max "
                            "instead of a symmetric threshold (tpu-mlir model_deploy --asymmetric); weights stay "
                            "symmetric. auto: on a target with asymmetric int8 (BM1684X), calibrate builds both and "
                            "keeps the one closer to fp32 on the calibration samples (symmetric on a tie: it is "
                            "faster); elsewhere symmetric. true: toolchains without it refuse the key.")
    fp32_layers: list[str] = Field(default_factory=list, description="Layers kept in float (the vendor's -fpfwd_outputs).")
    cmp_samples: int = Field(16, ge=1, description="Held-out samples compared int8 vs fp32.")
    cmodel_samples: int = Field(4, ge=1, description="tpu-mlir: held-out samples (and eval samples unless eval.limit "
                                "is set) run on the cmodel simulator, which takes seconds per inference.")
    tolerance: Tolerance = Field(default_factory=_int8_tolerance, description="Gate on int8 vs fp32.")


class Eval(_Strict):
    """Accuracy on a labelled set, fp32 and int8, with a maximum allowed drop."""

    data: Path = Field(description="A .npz holding preprocessed inputs and integer labels.")
    x_key: str = Field("x", description="Array of the .npz holding the inputs.")
    y_key: str = Field("y", description="Array of the .npz holding the integer labels.")
    metric: Literal["top1", "top5"] = Field("top1", description="Accuracy metric: top-1 or top-5 correct.")
    max_drop: float = Field(1.0, ge=0, description="Largest allowed accuracy drop int8 vs fp32, in points.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N samples.")


class Tvm(_Strict):
    """Settings of the TVM toolchain (`toolchain: tvm`); the other toolchains ignore them."""

    target: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"},
        description="TVM target as a mapping, e.g. {kind: llvm, mcpu: skylake-avx512}; default: generic x86-64.")
    latency_runs: int = Field(5, ge=0, le=1000, description="Timed runs per compiled library, the median reported (0: not timed).")

    @field_validator("target", mode="before")
    @classmethod
    def _target_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("write the target as a mapping, e.g. {kind: llvm, mcpu: skylake}: "
                             "TVM 0.27 refuses the 'llvm -mcpu=...' string form")
        if isinstance(value, dict) and not isinstance(value.get("kind"), str):
            raise ValueError("a TVM target needs a 'kind' (llvm for CPUs)")
        return value


class Recipe(_Strict):
    """One model and how to build it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME,
                      description="Net name (bmnetp --net_name); also the build folder.")
    description: str | None = Field(None, description="Free text about the model, shown in reports.")
    toolchain: Literal[TOOLCHAIN_NAMES] = Field(
        "auto", description="auto: tpu-mlir for BM1684X; for BM1684 NNTC, else tpu-mlir; else reference (first usable).")
    source: Source = Field(description="Where the model comes from: framework, file, callable, weights.")
    shapes: list[list[int]] = Field(min_length=1, description="Input shapes at the first batch size, e.g. "
                                    "[[1,3,224,224]]; the batch is axis 0 unless inputs[i].batch_axis says otherwise; "
                                    "[] is a scalar.")
    inputs: list[InputSpec] | None = Field(None, description="Per input, in the order of shapes: name, dtype, batch "
                                           "axis, or a constant value.")
    output_names: list[str] | None = Field(
        None, min_length=1,
        description="End the model at these tensors of its ONNX graph (tpu-mlir model_transform --output_names), in "
                    "this order: the graph is cut there (onnx.utils.extract_model) before compiling, and comparisons "
                    "use these outputs, computed by onnxruntime on the fp32 ONNX model. PyTorch sources name their "
                    "tensors as the ONNX export does (e.g. /layer1/relu/Relu_output_0).")
    target: Literal["BM1684", "BM1684X"] = Field("BM1684", description="Sophgo chip the bmodels are built for.")
    prec: Literal["FP32", "INT8"] = Field("FP32", description="FP32 builds trace+compile_fp32; INT8 adds calibrate, quantize, compile_int8.")
    batch_sizes: list[int] | None = Field(None, min_length=1, description="Batch sizes compiled (default: the batch of shapes).")
    fp32: Fp32 = Field(default_factory=Fp32, description="fp32 compile options (bmnetp) and its gate against the source.")
    calibration: CalibrationConfig | None = Field(None, description="Calibration data and threshold method (INT8).")
    int8: Int8 = Field(default_factory=Int8, description="int8 compile options (bmnetu) and its gate against fp32.")
    eval: Eval | None = Field(None, description="Accuracy of fp32 and int8 on a labelled set, with a maximum drop.")
    tvm: Tvm | None = Field(None, description="TVM toolchain settings (default target: generic x86-64 LLVM).")
    variants: dict[str, list[Any]] | list[dict[str, Any]] | None = Field(
        None, description="Expand into several builds: {dotted.key: [values]} is a matrix "
                          "(name_<value>...); a list of {dotted.key: value, suffix: s} gives explicit variants.")

    @field_validator("shapes")
    @classmethod
    def _positive_dims(cls, shapes: list[list[int]]) -> list[list[int]]:
        for shape in shapes:
            if any(d <= 0 for d in shape):
                raise ValueError(f"every dimension must be a positive integer, got {shape}")
        return shapes

    @field_validator("output_names")
    @classmethod
    def _distinct_outputs(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if any(not name for name in names):
                raise ValueError("an output name cannot be empty")
            if len(set(names)) != len(names):
                raise ValueError("output names must be distinct")
        return names

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
            raise KeyedValueError(f"inputs names {len(self.inputs)} inputs but shapes has {len(self.shapes)}",
                                  ("inputs",))
        if self.prec == "INT8" and self.calibration is None:
            raise KeyedValueError("prec INT8 needs a 'calibration' section", ("prec",))
        self._check_inputs()
        self._check_batch()
        if self.prec == "INT8":
            self._check_calibration_inputs()
        if self.eval is not None and len(self.data_inputs) != 1:
            raise KeyedValueError(f"eval feeds one input from eval.data, and the model has {len(self.data_inputs)} "
                                  "inputs without a constant value", ("eval",))
        return self

    def _check_inputs(self) -> None:
        names = [spec.name for spec in self.input_specs]
        for index, (spec, shape) in enumerate(zip(self.inputs or [], self.shapes)):
            if names.index(spec.name) != index:
                raise KeyedValueError(f"input name {spec.name!r} is used twice", ("inputs", index, "name"))
            if not shape and "batch_axis" in spec.model_fields_set and spec.batch_axis is not None:
                raise KeyedValueError("a scalar input (shape []) has no batch axis: write batch_axis: null",
                                      ("inputs", index, "batch_axis"))
            if spec.batch_axis is not None and shape and spec.batch_axis >= len(shape):
                raise KeyedValueError(f"batch_axis {spec.batch_axis} is out of range for shape {shape}",
                                      ("inputs", index, "batch_axis"))
            if spec.value is not None:
                _check_value(spec, shape, self.input_specs[index].batch_axis, ("inputs", index, "value"))

    def _check_batch(self) -> None:
        batched = [(i, spec.batch_axis) for i, spec in enumerate(self.input_specs) if spec.batch_axis is not None]
        dims = {self.shapes[i][axis] for i, axis in batched}
        if len(dims) > 1:
            where = ", ".join(f"shapes[{i}][{axis}] = {self.shapes[i][axis]}" for i, axis in batched)
            raise KeyedValueError(f"the inputs disagree on the batch size: {where}", ("shapes",))
        if not batched and self.batch_sizes not in (None, [1]):
            raise KeyedValueError("no input has a batch axis (every batch_axis is null): the model has no batch "
                                  "size to compile several of", ("batch_sizes",))

    def _check_calibration_inputs(self) -> None:
        cfg = self.calibration
        assert cfg is not None
        data_names = [spec.name for spec in self.data_inputs]
        if not data_names:
            raise KeyedValueError("every input has a constant value: int8 calibration needs data for at least one",
                                  ("inputs",))
        for name in cfg.inputs:
            if name not in data_names:
                what = "has a constant value" if name in [s.name for s in self.input_specs] else "is not an input"
                raise KeyedValueError(f"{name!r} {what}; calibration.inputs names the inputs fed from data: "
                                      f"{', '.join(data_names)}", ("calibration", "inputs", name))
        for name in data_names:
            if cfg.data is None and (name not in cfg.inputs or cfg.inputs[name].data is None):
                raise KeyedValueError(f"no calibration data for input {name!r}: set calibration.data, or "
                                      f"calibration.inputs.{name}.data", ("calibration", "data"))
        if len(data_names) > 1 and cfg.key is not None:
            raise KeyedValueError("with several inputs, each input's array is named after the input; set a "
                                  "different one per input under calibration.inputs.<name>.key", ("calibration", "key"))
        unbatched = [spec.name for spec in self.data_inputs if spec.batch_axis is None]
        if unbatched and self.resolved_batch_sizes != [1]:
            raise KeyedValueError(f"input {unbatched[0]!r} has no batch axis and no constant value: a batch of "
                                  "several calibration samples cannot carry one value each; give it a value or a "
                                  "batch_axis, or compile batch size 1 only", ("batch_sizes",))

    # --- derived values, used by stages and toolchains ---------------------------------
    @property
    def resolved_batch_sizes(self) -> list[int]:
        if self.batch_sizes:
            return list(self.batch_sizes)
        for shape, spec in zip(self.shapes, self.input_specs):
            if spec.batch_axis is not None:
                return [shape[spec.batch_axis]]
        return [1]

    @property
    def input_specs(self) -> list[InputSpec]:
        """One spec per input, batch axes resolved (null for scalars unless written)."""
        if self.inputs is not None:
            specs = list(self.inputs)
        else:
            specs = [InputSpec(name=n) for n in default_input_names(len(self.shapes))]
        return [spec if shape or spec.batch_axis is None else spec.model_copy(update={"batch_axis": None})
                for spec, shape in zip(specs, self.shapes)]

    @property
    def data_inputs(self) -> list[InputSpec]:
        """The inputs fed from data (calibration, evaluation): those without a constant value."""
        return [spec for spec in self.input_specs if spec.value is None]

    def inputs_key(self) -> list[dict[str, Any]]:
        """The inputs as action keys hold them."""
        return [spec.key_dump() for spec in self.input_specs]

    def shapes_for_batch(self, batch: int) -> list[list[int]]:
        """Every input's shape at batch size `batch` (inputs without a batch axis keep theirs)."""
        return [shape if spec.batch_axis is None else
                [*shape[:spec.batch_axis], batch, *shape[spec.batch_axis + 1:]]
                for shape, spec in zip(self.shapes, self.input_specs)]

    def sample_shape(self, index: int) -> tuple[int, ...]:
        """One sample of input `index`: its shape without the batch axis (all of it when it has none)."""
        shape, axis = self.shapes[index], self.input_specs[index].batch_axis
        return tuple(shape if axis is None else [*shape[:axis], *shape[axis + 1:]])


def _check_value(spec: InputSpec, shape: list[int], batch_axis: int | None, key: KeyPath) -> None:
    """A constant broadcasts to the input's shape at every batch size and fits its dtype."""
    vshape = value_shape(spec.value)
    if len(vshape) > len(shape):
        raise KeyedValueError(f"a value of shape {list(vshape)} does not fit input shape {shape}", key)
    offset = len(shape) - len(vshape)
    for axis, dim in enumerate(vshape, start=offset):
        if dim != 1 and (dim != shape[axis] or axis == batch_axis):
            raise KeyedValueError(f"a value of shape {list(vshape)} does not broadcast to input shape {shape}"
                                  + (" (its batch axis takes 1)" if axis == batch_axis else ""), key)
    if spec.dtype.startswith("int") and not all(isinstance(v, int) or v.is_integer() for v in _flat_values(spec.value)):
        raise KeyedValueError(f"input {spec.name!r} is {spec.dtype}: its value must hold integers", key)


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
                           dotted(key), hint)


def _data_path(data: Any, loc: tuple[Any, ...]) -> KeyPath:
    """Keep the parts of a pydantic error location that exist in the YAML data."""
    path: list[Any] = []
    current = data
    for part in loc:
        if isinstance(current, dict) and part not in current:
            # pydantic writes a key that is not a string (1.5, null) as its text
            part = next((key for key in current if str(key) == str(part)), part)
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


def _describe(error: dict[str, Any], data: Any,
              model: type[BaseModel] | None = None) -> tuple[KeyPath, str, str | None]:
    """(key path, message, hint) of one pydantic error on `data`, validated as `model`."""
    path = _data_path(data, error["loc"])
    keyed = error.get("ctx", {}).get("error")
    if isinstance(keyed, KeyedValueError):
        path = _data_path(data, tuple(error["loc"]) + keyed.key)
    kind = error["type"]
    hint = None
    if kind == "extra_forbidden":
        allowed = _fields_at(model or Recipe, path[:-1])
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        message = "unknown key"
        hint = f"did you mean '{close[0]}'?" if close else (f"allowed: {', '.join(allowed)}" if allowed else None)
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"] and error["loc"][-1] == "[key]":
            message = "keys here must be strings"
        if "input" in error and not isinstance(error["input"], (dict, list)):
            got = repr(error["input"])
            message += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
    return path, message, hint


def _resolve_paths(loaded: LoadedRecipe, model: BaseModel, base: Path, path: KeyPath = ()) -> None:
    """Make every Path field absolute, relative to the recipe's folder."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            object.__setattr__(model, name, _resolved(loaded, base / value, path + (name,)))
        elif isinstance(value, BaseModel):
            _resolve_paths(loaded, value, base, path + (name,))
        elif isinstance(value, dict):  # calibration.inputs: name -> model
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    _resolve_paths(loaded, item, base, path + (name, key))


def _resolved(loaded: LoadedRecipe, path: Path, key: KeyPath) -> Path:
    """`path` made absolute; a path the OS cannot take (a NUL byte, say) is an error at `key`."""
    try:
        return path.resolve()
    except (OSError, ValueError) as exc:
        raise loaded.error(f"not a usable path: {exc}", loaded.source_map.nearest(key)) from None


def _check_files(loaded: LoadedRecipe) -> None:
    recipe, base = loaded.recipe, loaded.file.parent
    model_file = _resolved(loaded, base / recipe.source.model_file, ("source", "model"))
    if not model_file.is_file():
        raise loaded.error(f"model file not found: {_shown(model_file)}", ("source", "model"))
    if is_lfs_pointer(model_file):
        raise loaded.error(lfs_message(model_file), ("source", "model"))
    if recipe.source.framework == "pytorch":
        name = recipe.source.callable_name or ""
        tree = _parse_model(model_file)
        if name not in _top_level_names(tree):
            raise loaded.error(f"no callable {name!r} defined at the top level of {model_file.name}",
                               ("source", "model"))
        _check_kwargs(loaded, _definition(tree, name))
    if recipe.source.weights and not recipe.source.weights.path.is_file():
        raise loaded.error(f"weights file not found: {_shown(recipe.source.weights.path)}", ("source", "weights"))
    if recipe.source.weights and is_lfs_pointer(recipe.source.weights.path):
        raise loaded.error(lfs_message(recipe.source.weights.path), ("source", "weights"))
    cfg = recipe.calibration
    if cfg and cfg.data is not None and not cfg.data.exists():
        raise loaded.error(f"calibration data not found: {_shown(cfg.data)}", ("calibration", "data"))
    for name, own in (cfg.inputs.items() if cfg else ()):
        if own.data is not None and not own.data.exists():
            raise loaded.error(f"calibration data not found: {_shown(own.data)}", ("calibration", "inputs", name, "data"))
    if recipe.eval and not recipe.eval.data.is_file():
        raise loaded.error(f"evaluation data not found: {_shown(recipe.eval.data)}", ("eval", "data"))


def _shown(path: Path) -> str:
    """A path for a one-line message (a newline in it is shown escaped)."""
    return str(path) if str(path).isprintable() else repr(str(path))


def _parse_model(file: Path) -> ast.Module:
    """A model file's syntax tree: read without importing it (no torch)."""
    try:
        return ast.parse(file.read_bytes(), str(file))  # bytes: honours PEP 263 coding cookies
    except (SyntaxError, ValueError) as exc:
        raise RecipeError(f"syntax error in model file: {getattr(exc, 'msg', exc)}", file,
                          getattr(exc, "lineno", None) or 1) from None
    except OSError as exc:
        raise RecipeError(f"cannot read model file: {exc.strerror or exc}", file, 1) from None


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a Python file defines at the top level."""
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


def _definition(tree: ast.Module, name: str) -> ast.FunctionDef | ast.ClassDef | None:
    """The top-level def or class that finally binds `name`; None when something else does."""
    found: ast.FunctionDef | ast.ClassDef | None = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            found = node if not isinstance(node, ast.AsyncFunctionDef) else None
        elif name in _top_level_names(ast.Module(body=[node], type_ignores=[])):
            found = None  # assigned or imported: its signature is not in this file
    return found


def _keyword_parameters(node: ast.FunctionDef | ast.ClassDef) -> tuple[list[str], list[str], bool] | None:
    """(names passable by keyword, required names, takes **kwargs) of a def or a class's __init__;
    None when the file alone cannot tell (decorators, inherited or custom construction)."""
    if node.decorator_list:
        return None
    if isinstance(node, ast.ClassDef):
        methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
        init = methods.get("__init__")
        if init is None or "__new__" in methods or node.keywords or init.decorator_list:
            return None
        args = init.args
        positional = (args.posonlyargs + args.args)[1:]  # self
    else:
        args = node.args
        positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    required = [a.arg for a, d in zip(positional, defaults) if d is None]
    required += [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    names = [a.arg for a in positional if a not in args.posonlyargs] + [a.arg for a in args.kwonlyargs]
    return names, required, args.kwarg is not None


def _check_kwargs(loaded: LoadedRecipe, node: ast.FunctionDef | ast.ClassDef | None) -> None:
    """source.kwargs against the callable's definition, so a typo fails here, not in the trace stage."""
    params = _keyword_parameters(node) if node is not None else None
    if params is None:
        return
    names, required, takes_any = params
    source = loaded.recipe.source
    what = f"{source.callable_name}()"
    for key in source.kwargs:
        if not takes_any and key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"it takes: {', '.join(names) or 'no arguments'}"
            raise loaded.error(f"{what} has no parameter {key!r}", ("source", "kwargs", key), hint)
    missing = [name for name in required if name not in source.kwargs]
    if missing:
        raise loaded.error(f"{what} needs {', '.join(map(repr, missing))}; give it under source.kwargs",
                           ("source", "kwargs"))


def validation_errors(exc: ValidationError, data: Any, source_map: SourceMap,
                      model: type[BaseModel]) -> "RecipeErrors":
    """Each pydantic error on YAML `data` as a RecipeError naming file, line and key."""
    return RecipeErrors([
        RecipeError(message, source_map.file_of(path), source_map.line_of(path), dotted(path) or None, hint)
        for path, message, hint in (_describe(e, data, model) for e in exc.errors())
    ])


def parse_recipe(data: Any, file: Path, source_map: SourceMap) -> LoadedRecipe:
    """Validate already-loaded YAML data as a recipe of `file`."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of keys to values", file, 1)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(exc, data, source_map, Recipe) from None
    loaded = LoadedRecipe(recipe=recipe, file=file, source_map=source_map)
    _resolve_paths(loaded, loaded.recipe, file.parent.resolve())
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
        raise loaded[0].error(f"expands into {len(loaded)} variants; name one of them", ("variants",))
    return loaded[0]


# Folders a search below a folder never enters: tools' and packages' trees, build outputs.
SKIPPED_FOLDERS = frozenset({"build", "node_modules", "site-packages", "dist-packages", "__pycache__"})
_TOP_LEVEL_KEY = re.compile(r"""^(["']?)(name|source)\1[ \t]*:""", re.MULTILINE)
# A flow-style document (`{"name": ..., "source": {...}}`, JSON being YAML): keys anywhere in it.
_FLOW_KEY = re.compile(r"""(["']?)\b(name|source)\1[ \t]*:""")
_FLOW_START = re.compile(r"""\A(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*(?:---[ \t]*\n[ \t]*)?\{""")


def find_recipe_files(paths: list[str | Path], skipped: list[Path] | None = None,
                      root: Path | None = None) -> list[Path]:
    """Recipe files named directly, or found below folders (sorted, so builds are stable).

    A file named on the command line is always read as a recipe. Below a folder, the search skips
    hidden folders, virtualenvs (a folder holding pyvenv.cfg), SKIPPED_FOLDERS and symlinked
    folders; a .yaml/.yml file there is a recipe when it has a top-level `source:` key, or a
    top-level `name:` key and a defaults.yaml above it (up to the workspace `root`) has `source:`. Other YAML
    files are not recipes and go to `skipped`: a tree may hold CI configs and packages' data files.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(_search(path, skipped if skipped is not None else [], root or path))
        elif path.is_file():
            found.append(path)
        else:
            raise RecipeError("no such recipe file or folder", path)
    if not found:
        hint = (f"{len(skipped)} YAML file(s) without a top-level source: were skipped"
                if skipped else None)
        raise RecipeError("no recipes found", ", ".join(map(str, paths)), hint=hint)
    return found


def _search(top: Path, skipped: list[Path], root: Path) -> list[Path]:
    """The recipe files below folder `top` (see find_recipe_files)."""
    found = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not _skipped_folder(Path(folder) / d))
        for name in sorted(files):
            file = Path(folder) / name
            if file.suffix not in RECIPE_SUFFIXES or name.startswith(".") or _is_support_file(file):
                continue
            (found if _looks_like_recipe(file, root) else skipped).append(file)
    return found


def _skipped_folder(folder: Path) -> bool:
    return (folder.name.startswith(".") or folder.name in SKIPPED_FOLDERS or folder.is_symlink()
            or (folder / "pyvenv.cfg").is_file())


def _top_level_keys(file: Path) -> set[str]:
    """Which of `name`/`source` a YAML file sets at its top level (a text scan: no YAML parse)."""
    try:
        with open(file, encoding="utf-8", errors="replace") as stream:
            text = stream.read(1 << 20)
    except OSError:
        return {"name", "source"}  # unreadable: loading it reports why
    pattern = _FLOW_KEY if _FLOW_START.match(text) else _TOP_LEVEL_KEY
    return {match.group(2) for match in pattern.finditer(text)}


def _looks_like_recipe(file: Path, root: Path) -> bool:
    keys = _top_level_keys(file)
    if "source" in keys:
        return True
    if "name" not in keys:
        return False
    from bmbuild.compose import defaults_chain

    return any("source" in _top_level_keys(defaults) for defaults in defaults_chain(file, root))


def _is_support_file(path: Path) -> bool:
    """YAML files in a recipe tree that are not recipes themselves."""
    return path.name in ("defaults.yaml", "defaults.yml", "bmbuild.yaml", "bmbuild.yml")


def load_recipes(paths: list[str | Path], root: Path | None = None,
                 variables: dict[str, str] | None = None) -> list[LoadedRecipe]:
    """Load every recipe below `paths`; reports all bad recipes at once; names must be unique."""
    loaded, errors = load_recipes_partial(paths, root, variables)
    if errors:
        raise RecipeErrors(errors)
    return loaded


def load_recipes_partial(paths: list[str | Path], root: Path | None = None,
                         variables: dict[str, str] | None = None,
                         skipped: list[Path] | None = None) -> tuple[list[LoadedRecipe], list[RecipeError]]:
    """The recipes below `paths` that load, and an error for each that does not (for `validate`
    and `run -k`: one broken recipe does not hide the others); a second use of a name is an error."""
    loaded: list[LoadedRecipe] = []
    errors: list[RecipeError] = []
    for file in find_recipe_files(paths, skipped, root):
        try:
            loaded.extend(load_recipe_file(file, root, variables))
        except RecipeErrors as exc:
            errors.extend(exc.errors)
        except RecipeError as exc:
            errors.append(exc)
    seen: dict[str, Path] = {}
    unique = []
    for item in loaded:
        if item.name in seen:
            errors.append(item.error(f"name {item.name!r} is also used by {seen[item.name]}", ("name",)))
        else:
            unique.append(item)
        seen.setdefault(item.name, item.file)
    return unique, errors


class RecipeErrors(RecipeError):
    """Several recipe errors, reported together, one per line."""

    def __init__(self, errors: list[RecipeError]):
        self.errors = errors
        Exception.__init__(self, "\n".join(e.render() for e in errors))
        self.message, self.file, self.line, self.key, self.hint = str(self), None, None, None, None

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)
