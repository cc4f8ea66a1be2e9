"""`bmbuild init MODEL`: a workspace (bmbuild.yaml, schemas/) and a first recipe for a model.

MODEL is `path/model.py:callable` (PyTorch) or `path/model.onnx`. The input shapes come from the
model: an ONNX file declares them (a dynamic dimension becomes 1); for a PyTorch callable the first
layer tells the channels or features (Conv: [1, C, 224, ...], Linear: [1, F]) and one forward pass
with zeros confirms them. `--shape` overrides both. The recipe is loaded back before init returns,
so what it writes is valid.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmbuild.errors import BmbuildError

SPATIAL = 224  # the image side guessed for a convolutional input
REFERENCE_HINT = "install the reference toolchain's packages: pip install 'bmbuild[reference]'"


@dataclass(frozen=True)
class ModelSpec:
    framework: str
    file: Path
    callable: str | None = None


def parse_model(text: str) -> ModelSpec:
    """`model.py:callable` or `model.onnx` -> ModelSpec (the file must exist)."""
    match = re.fullmatch(r"(.+\.py):([A-Za-z_][A-Za-z0-9_]*)", text)
    if match:
        spec = ModelSpec("pytorch", Path(match[1]), match[2])
    elif text.endswith(".onnx"):
        spec = ModelSpec("onnx", Path(text))
    else:
        raise BmbuildError(f"{text}: expected path/model.py:callable (PyTorch) or path/model.onnx")
    file = spec.file
    if not file.is_file():
        raise BmbuildError(f"{file}: no such file")
    return spec


def onnx_inputs(file: Path) -> tuple[list[list[int]], list[dict[str, Any]], list[str]]:
    """The graph inputs' shapes (initializers left out; a dynamic dimension becomes 1), their names,
    dtypes and batch axes (bmbuild feeds an ONNX model's inputs by name), and what the user should
    check: dynamic dimensions written as 1, integer inputs that want a value."""
    try:
        import onnx
    except ImportError:
        raise BmbuildError(f"reading {file} needs onnx: {REFERENCE_HINT}") from None
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as exc:
        raise BmbuildError(f"{file}: not a readable ONNX model ({exc})") from None
    initializers = {init.name for init in model.graph.initializer}
    values = [value for value in model.graph.input if value.name not in initializers]
    dtypes = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64"}
    dims = [[(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or DYNAMIC))
             for d in value.type.tensor_type.shape.dim] for value in values]
    axes = batch_axes(dims)
    inputs: list[dict[str, Any]] = []
    notes = []
    for value, shape, axis in zip(values, dims, axes):
        entry: dict[str, Any] = {"name": value.name}
        if value.type.tensor_type.elem_type in dtypes:
            entry["dtype"] = dtypes[value.type.tensor_type.elem_type]
        if axis != 0 and shape:
            entry["batch_axis"] = axis
        inputs.append(entry)
        others = [f"{i} ({d})" if d != DYNAMIC else str(i) for i, d in enumerate(shape) if isinstance(d, str) and i != axis]
        if others:
            notes.append(f"input {value.name!r}: dynamic axis {', '.join(others)} written as 1; set its size in shapes")
        if entry.get("dtype", "").startswith("int") and not shape:
            notes.append(f"input {value.name!r} is an integer scalar: give its value (inputs: value:), e.g. a sample rate")
    return [[d if isinstance(d, int) else 1 for d in shape] for shape in dims], inputs, notes


DYNAMIC = "?"  # a dimension with neither a size nor a name


def batch_axes(dims: list[list[int | str]]) -> list[int | None]:
    """Each input's batch axis, read from the dynamic dimensions: the first input's first dynamic
    dimension is the batch; another input has it where the same name is (`state [2, batch, 128]`),
    or, where dimensions have no names, at its first dynamic one; none: no batch axis (a fixed
    state, a scalar). Without a dynamic dimension anywhere, the first axis, as before."""
    first = next((d for d in (dims[0] if dims else []) if isinstance(d, str)), None)
    if first is None:
        return [0 if shape else None for shape in dims]
    axes: list[int | None] = []
    for shape in dims:
        if first != DYNAMIC:
            axes.append(shape.index(first) if first in shape else None)
        else:
            axes.append(next((i for i, d in enumerate(shape) if isinstance(d, str)), None))
    return axes


def torch_shapes(spec: ModelSpec) -> list[list[int]]:
    """[[1, C, 224, 224]] from a first Conv2d, [[1, F]] from a first Linear, checked by a forward pass."""
    try:
        import torch
    except ImportError:
        raise BmbuildError(f"reading {spec.file} needs torch: {REFERENCE_HINT}") from None
    from bmbuild.modelsource import TORCH_LOCK, load_callable

    where = f"{spec.file}:{spec.callable}"
    with TORCH_LOCK:
        try:
            model = load_callable(spec.file, spec.callable or "")()
        except BmbuildError as exc:  # no such callable: the user's input, not a stage failing
            raise BmbuildError(str(exc)) from None
        except Exception as exc:
            raise BmbuildError(f"{where}() raised {type(exc).__name__}: {exc}; pass the input shape with --shape "
                               "and the arguments in the recipe's source.kwargs") from None
        shape = first_layer_shape(model)
        if shape is None:
            raise BmbuildError(f"could not tell the input shape of {where} from its first layer; "
                               "pass it with --shape, e.g. --shape 1,3,224,224")
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(shape))
        except Exception as exc:
            raise BmbuildError(f"{where} does not take an input of shape {shape} ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); pass the right one with --shape") from None
    return [shape]


def first_layer_shape(model: Any) -> list[int] | None:
    for module in model.modules():
        channels = getattr(module, "in_channels", None)
        kernel = getattr(module, "kernel_size", None)
        if isinstance(channels, int) and isinstance(kernel, tuple):
            return [1, channels, *[SPATIAL] * len(kernel)]
        features = getattr(module, "in_features", None)
        if isinstance(features, int):
            return [1, features]
    return None


def recipe_name(spec: ModelSpec) -> str:
    base = spec.callable or spec.file.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).lstrip("_.-")[:100] or "model"


def recipe_text(name: str, spec: ModelSpec, shapes: list[list[int]], folder: Path, schema: Path,
                inputs: list[dict[str, Any]] | None = None, notes: list[str] | None = None) -> str:
    model = Path(os.path.relpath(spec.file.resolve(), folder.resolve())).as_posix()
    if spec.callable:
        model += f":{spec.callable}"
    return "\n".join([
        f"# yaml-language-server: $schema={Path(os.path.relpath(schema.resolve(), folder.resolve())).as_posix()}",
        "# Written by `bmbuild init`. `bmbuild validate` checks it, `bmbuild run` builds it; for int8 set",
        "# prec: INT8 and add a calibration section (see the README).",
        *[f"# check: {note}" for note in notes or []],
        f"name: {name}",
        "source:",
        f"  framework: {spec.framework}",
        f"  model: {model}",
        f"shapes: {shapes}",
        *([f"inputs: [{', '.join('{' + ', '.join(f'{k}: {json.dumps(v)}' for k, v in i.items()) + '}' for i in inputs)}]"]
          if inputs else []),
        "target: BM1684",
        "prec: FP32",
        "",
    ])


WORKSPACE_TEXT = """\
# yaml-language-server: $schema=schemas/bmbuild.schema.json
# bmbuild workspace settings (written by `bmbuild init`); every key is optional.
build_dir: build
jobs: 1
"""


def init(model: str, out: Path, name: str | None = None, shapes: list[list[int]] | None = None,
         force: bool = False, root: Path | None = None) -> list[Path]:
    """Write bmbuild.yaml and schemas/ (when missing) and `out/<name>.yaml`; the files written."""
    from bmbuild.recipe import load_recipes
    from bmbuild.schemas import schema_files

    root = root or Path.cwd()
    spec = parse_model(model)
    name = name or recipe_name(spec)
    target = out / f"{name}.yaml"
    if target.exists() and not force:
        raise BmbuildError(f"{target} exists; pass --force to overwrite it")
    inputs, notes = None, []
    if spec.framework == "onnx":
        declared, inputs, notes = onnx_inputs(spec.file)
        shapes = shapes or declared
    elif shapes is None:
        shapes = torch_shapes(spec)
    written = []
    if not any((root / n).exists() for n in ("bmbuild.yaml", "bmbuild.yml")):
        (root / "bmbuild.yaml").write_text(WORKSPACE_TEXT)
        written.append(root / "bmbuild.yaml")
    for path, text in schema_files(root / "schemas").items():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    out.mkdir(parents=True, exist_ok=True)
    previous = target.read_text() if target.exists() else None
    target.write_text(recipe_text(name, spec, shapes, out, root / "schemas" / "recipe.schema.json", inputs, notes))
    try:
        load_recipes([target], root)
    except BmbuildError:
        if previous is None:
            target.unlink()
        else:
            target.write_text(previous)
        raise
    return [*written, target]
