"""A recipe checked against the files it names, before any stage runs (`validate`, and `run`
before it starts): mistakes that would otherwise surface minutes later, in calibrate or compile.

- an ONNX source whose inputs differ from `shapes` / `inputs` (count, names, rank, fixed dims,
  dtypes, a batch fixed in the model that `batch_sizes` changes);
- int8 calibration data: missing, empty or unreadable; images without `preprocess` (or arrays
  with it); arrays of the wrong shape or dtype, or without the array an input needs; inputs whose
  sources hold different numbers of samples or unpaired files; fewer samples than
  `calibration.samples` + the held-out `int8.cmp_samples`;
- an evaluation set without its arrays, of the wrong shape or with labels of another length.

Only headers are read (bmbuild.fileinfo): the first file of a folder, a stacked file's header,
the ONNX graph's inputs. No numpy, torch or onnx is imported. Each problem is a RecipeError
naming the file, the line and the key; a file that every sample is read from later is still
checked in full by the stage that reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bmbuild.calib.sources import InputFeed, content_files, is_image, unpaired
from bmbuild.errors import DataError, RecipeError
from bmbuild.fileinfo import array_header, is_lfs_pointer, lfs_message, npz_keys, onnx_graph_inputs
from bmbuild.recipe import INPUT_DTYPES, LoadedRecipe
from bmbuild.yamlsource import KeyPath

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG


def recipe_problems(loaded: LoadedRecipe, toolchain: str | None = None) -> list[RecipeError]:
    """The first problem of each kind (ONNX source, calibration data, evaluation set), then what
    `toolchain` (default: the recipe's own, unless `auto`) says it cannot build."""
    problems = []
    chosen = toolchain or (None if loaded.recipe.toolchain == "auto" else loaded.recipe.toolchain)
    checks = (lambda item: _check_onnx_source(item, chosen), _check_calibration, _check_eval)
    for check in checks:
        try:
            check(loaded)
        except RecipeError as exc:
            problems.append(exc)
    return problems + (toolchain_problems(loaded, chosen) if chosen else [])


def toolchain_problems(loaded: LoadedRecipe, name: str) -> list[RecipeError]:
    """What toolchain `name` says it cannot build of this recipe (its optional `preflight`), after
    the optional keys it does not implement."""
    from bmbuild.errors import ToolchainError
    from bmbuild.toolchains.base import load_toolchain

    refused = unsupported_keys(loaded, name)
    if refused:
        return refused
    try:
        check = getattr(load_toolchain(name), "preflight", None)
    except ToolchainError:  # not loadable here: `run` says so on its own
        return []
    try:
        if check is not None:
            check(loaded)
    except RecipeError as exc:
        return [exc]
    return []


def unsupported_keys(loaded: LoadedRecipe, name: str) -> list[RecipeError]:
    """The recipe's optional keys (those only some toolchains declare in their `optional_keys`) that
    toolchain `name` does not implement: an error naming the toolchains that do, rather than a build
    that ignores the key. The toolchain modules are read only when the recipe sets such a key."""
    recipe = loaded.recipe
    used = [key for key, is_set in (("output_names", recipe.output_names is not None),
                                    ("int8.asymmetric", recipe.int8.asymmetric is True and recipe.prec == "INT8")) if is_set]
    if not used:
        return []
    from bmbuild.toolchains.base import optional_keys

    implementers = optional_keys()
    return [loaded.error(f"toolchain {name!r} does not implement {key} (implemented by {', '.join(implementers[key])})",
                         tuple(key.split(".")), hint=f"use --toolchain {implementers[key][0]}, or remove {key}")
            for key in used if key in implementers and name not in implementers[key]]


# --- an ONNX source --------------------------------------------------------------------------------
def reshapes_batch(toolchain: str | None) -> bool:
    """Whether `toolchain` takes the input shapes on its command line (bmneto --shapes, model_transform
    --input_shapes) and so compiles a fixed-batch ONNX model at any batch size (its class's
    `reshapes_batch`)."""
    from bmbuild.errors import ToolchainError
    from bmbuild.toolchains.base import toolchain_class

    if toolchain is None:
        return False
    try:
        return bool(getattr(toolchain_class(toolchain), "reshapes_batch", False))
    except ToolchainError:
        return False


def _check_onnx_source(loaded: LoadedRecipe, toolchain: str | None = None) -> None:
    recipe = loaded.recipe
    if recipe.source.framework != "onnx":
        return
    path = (loaded.file.parent / recipe.source.model_file).resolve()
    try:
        graph = onnx_graph_inputs(path)
    except DataError as exc:
        raise loaded.error(str(exc), ("source", "model")) from None
    names = [item.name for item in graph]
    specs = recipe.input_specs
    if len(graph) != len(recipe.shapes):
        raise loaded.error(f"the ONNX model takes {len(graph)} input(s) {names}, shapes gives {len(recipe.shapes)}",
                           ("shapes",))
    if [spec.name for spec in specs] != names:
        _names_differ(loaded, names)
    for index, (item, spec, shape) in enumerate(zip(graph, specs, recipe.shapes)):
        if item.dtype != spec.dtype:
            if item.dtype not in INPUT_DTYPES:
                raise loaded.error(f"the ONNX model's input {item.name!r} is {item.dtype}: bmbuild feeds inputs of "
                                   f"{', '.join(INPUT_DTYPES)} only", ("inputs", index, "dtype"))
            raise loaded.error(f"the ONNX model's input {item.name!r} is {item.dtype}, the recipe feeds {spec.dtype}",
                               ("inputs", index, "dtype"), hint=f"set inputs[{index}].dtype: {item.dtype}")
        if item.dims is None:
            continue
        if len(item.dims) != len(shape):
            raise loaded.error(f"the ONNX model's input {item.name!r} has {len(item.dims)} dimension(s) "
                               f"{_dims(item.dims)}, shapes[{index}] is {shape}", ("shapes", index))
        for axis, dim in enumerate(item.dims):
            if not isinstance(dim, int) or dim <= 0:
                continue  # a named or unknown dimension takes any size
            if axis == spec.batch_axis:
                if reshapes_batch(toolchain):
                    continue
                fixed = [b for b in recipe.resolved_batch_sizes if b != dim]
                if fixed:
                    raise loaded.error(f"the ONNX model's input {item.name!r} has a fixed batch of {dim} (shape "
                                       f"{_dims(item.dims)}), so it cannot run batch size {fixed[0]}",
                                       ("batch_sizes",) if recipe.batch_sizes else ("shapes", index))
            elif dim != shape[axis]:
                raise loaded.error(f"the ONNX model's input {item.name!r} has shape {_dims(item.dims)}, shapes[{index}] "
                                   f"is {shape}", ("shapes", index))


def _names_differ(loaded: LoadedRecipe, names: list[str]) -> None:
    recipe = loaded.recipe
    listed = "[" + ", ".join(f"{{name: {name}}}" for name in names) + "]"
    if recipe.inputs is None:
        raise loaded.error(f"the ONNX model's inputs are named {names}; bmbuild feeds inputs by name",
                           ("shapes",), hint=f"name them in order: inputs: {listed}")
    for index, (spec, name) in enumerate(zip(recipe.inputs, names)):
        if spec.name != name:
            order = " (in another order: give them in the model's)" if sorted(names) == sorted(
                s.name for s in recipe.inputs) else ""
            raise loaded.error(f"the ONNX model's input {index} is named {name!r}, not {spec.name!r}{order}",
                               ("inputs", index, "name"), hint=f"inputs: {listed}")


def _dims(dims: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# --- calibration data ------------------------------------------------------------------------------
@dataclass
class _Source:
    """One data input's calibration source as checked: its files and how many samples it holds."""

    feed: InputFeed
    files: list[Path]
    count: int


def _keys(loaded: LoadedRecipe, name: str) -> tuple[KeyPath, KeyPath, KeyPath]:
    """Where input `name`'s data, array name and preprocessing are written: in its own
    calibration.inputs entry when it has one there, else in the calibration section."""
    cfg = loaded.recipe.calibration
    assert cfg is not None
    own = cfg.inputs.get(name)
    mine: KeyPath = ("calibration", "inputs", name)
    several = len(loaded.recipe.data_inputs) > 1  # then an input's array is named after it by default
    return ((mine if own and own.data else ("calibration",)) + ("data",),
            (mine if (own and own.key) or several else ("calibration",)) + ("key",),
            (mine if own and (own.data or own.preprocess) else ("calibration",)) + ("preprocess",))


def _check_calibration(loaded: LoadedRecipe) -> None:
    from bmbuild.calib.feeds import input_feeds

    recipe = loaded.recipe
    cfg = recipe.calibration
    if recipe.prec != "INT8" or cfg is None:
        return
    sources = [_check_source(loaded, index, feed) for index, feed in enumerate(input_feeds(recipe))
               if feed.source is not None]
    first = sources[0]
    for other in sources[1:]:
        where = _keys(loaded, other.feed.name)[0]
        if other.count != first.count:
            raise loaded.error(f"input {other.feed.name!r} has {other.count} calibration samples, input "
                               f"{first.feed.name!r} has {first.count}: every input needs one per sample", where)
        assert first.feed.source is not None and other.feed.source is not None
        mismatch = unpaired(first.feed.source.data, first.files, other.feed.source.data, other.files)
        if mismatch:
            raise loaded.error(f"input {other.feed.name!r}: {mismatch}", where)
    holdout = recipe.int8.cmp_samples if recipe.int8.cmp else 0
    if first.count < cfg.samples + holdout:
        assert first.feed.source is not None
        raise loaded.error(f"only {first.count} samples in {first.feed.source.data}: calibration.samples "
                           f"({cfg.samples}) + int8.cmp_samples ({holdout}, held out for the int8 comparison) "
                           f"need {cfg.samples + holdout}", ("calibration", "samples"),
                           hint="lower samples or cmp_samples, or add data")


def _check_source(loaded: LoadedRecipe, index: int, feed: InputFeed) -> _Source:
    source = feed.source
    assert source is not None and source.data is not None
    data_key, _, pre_key = _keys(loaded, feed.name)
    try:
        files = content_files(source)
    except DataError as exc:
        raise loaded.error(str(exc), data_key) from None
    if source.data.is_dir():
        kinds = {is_image(path) for path in files}
        if len(kinds) > 1:
            raise loaded.error(f"{source.data} mixes images and .npy/.npz arrays; use one kind per folder", data_key)
        if kinds == {True}:
            _check_images(loaded, index, feed, files[0])
        else:
            if source.preprocess is not None:
                raise loaded.error(f"{source.data} holds preprocessed arrays, fed as they are: preprocess applies "
                                   "to images only", pre_key)
            _check_sample_file(loaded, feed, files[0])
        return _Source(feed, files, len(files))
    if source.preprocess is not None:
        raise loaded.error(f"{source.data} holds preprocessed arrays, fed as they are: preprocess applies to images "
                           "only", pre_key)
    try:
        header = array_header(source.data, _resolved_key(loaded, feed, source.data))
    except DataError as exc:
        raise loaded.error(str(exc), data_key) from None
    if not header.shape or header.shape[0] == 0 or tuple(header.shape[1:]) != feed.sample_shape:
        raise loaded.error(f"{source.data} holds an array of shape {list(header.shape)}: input {feed.name!r} needs "
                           f"samples of shape {list(feed.sample_shape)} stacked on axis 0", data_key)
    _check_kind(loaded, feed, source.data, header.kind)
    return _Source(feed, files, header.shape[0])


def _resolved_key(loaded: LoadedRecipe, feed: InputFeed, path: Path) -> str | None:
    """The array input `feed` reads in `path` (.npz), checked; None for an .npy."""
    if path.suffix.lower() != ".npz":
        return None
    assert feed.source is not None
    _, key_key, _ = _keys(loaded, feed.name)
    try:
        keys = npz_keys(path)
    except DataError as exc:
        raise loaded.error(str(exc), _keys(loaded, feed.name)[0]) from None
    key = feed.source.key
    if key is not None and key not in keys:
        raise loaded.error(f"{path.name} has no array {key!r} for input {feed.name!r} (it holds {keys})", key_key)
    if key is None and len(keys) != 1:
        raise loaded.error(f"{path.name} holds {len(keys)} arrays {keys}: say which one input {feed.name!r} takes",
                           key_key, hint="set key")
    return key or keys[0]


def _check_sample_file(loaded: LoadedRecipe, feed: InputFeed, path: Path) -> None:
    """The first file of a folder of one-sample arrays: the input's array, shape and dtype."""
    try:
        header = array_header(path, _resolved_key(loaded, feed, path))
    except DataError as exc:
        raise loaded.error(str(exc), _keys(loaded, feed.name)[0]) from None
    shape = tuple(header.shape)
    if shape not in (feed.sample_shape, (1, *feed.sample_shape)):
        raise loaded.error(f"{path.name} holds an array of shape {list(shape)}: input {feed.name!r} takes one sample "
                           f"of shape {list(feed.sample_shape)}", _keys(loaded, feed.name)[0])
    _check_kind(loaded, feed, path, header.kind)


def _check_kind(loaded: LoadedRecipe, feed: InputFeed, path: Path, kind: str) -> None:
    if kind not in "iuf" or (kind == "f" and not feed.dtype.startswith("float")):
        raise loaded.error(f"{path.name} holds {'non-numeric' if kind not in 'iuf' else 'float'} data for input "
                           f"{feed.name!r} ({feed.dtype})", _keys(loaded, feed.name)[0])


def _check_images(loaded: LoadedRecipe, index: int, feed: InputFeed, first: Path) -> None:
    source = feed.source
    assert source is not None
    data_key, _, pre_key = _keys(loaded, feed.name)
    if source.preprocess is None:
        raise loaded.error(f"{source.data} holds images: input {feed.name!r} needs `preprocess` (resize, crop, mean, "
                           "scale) to turn them into its values", pre_key)
    layout = source.preprocess.layout
    shape = feed.sample_shape
    channels = (shape[0] if layout == "NCHW" else shape[2]) if len(shape) == 3 else None
    if channels not in (1, 3) or not feed.dtype.startswith("float"):
        raise loaded.error(f"images give {layout} samples of 1 or 3 channels, input {feed.name!r} takes "
                           f"{list(shape)} {feed.dtype}", ("shapes", index))
    try:
        with open(first, "rb") as stream:
            head = stream.read(8)
    except OSError as exc:
        raise loaded.error(f"cannot read {first}: {exc.strerror or exc}", data_key) from None
    if not any(head.startswith(magic) for magic in IMAGE_MAGIC):
        raise loaded.error(lfs_message(first) if is_lfs_pointer(first) else f"{first} is not a JPEG or PNG image",
                           data_key)


# --- the evaluation set ----------------------------------------------------------------------------
def _check_eval(loaded: LoadedRecipe) -> None:
    recipe = loaded.recipe
    evaluation = recipe.eval
    if evaluation is None:
        return
    try:
        keys = npz_keys(evaluation.data)
        for key, field in ((evaluation.x_key, "x_key"), (evaluation.y_key, "y_key")):
            if key not in keys:
                raise loaded.error(f"{evaluation.data.name} has no array {key!r} (it holds {keys})", ("eval", field))
        x, y = array_header(evaluation.data, evaluation.x_key), array_header(evaluation.data, evaluation.y_key)
    except DataError as exc:
        raise loaded.error(str(exc), ("eval", "data")) from None
    index = next(i for i, spec in enumerate(recipe.input_specs) if spec.value is None)
    expected = recipe.sample_shape(index)
    if not x.shape or tuple(x.shape[1:]) != expected:
        raise loaded.error(f"{evaluation.x_key} holds an array of shape {list(x.shape)}: the model takes samples of "
                           f"shape {list(expected)} (stacked on axis 0)", ("eval", "x_key"))
    if not y.shape or y.shape[0] != x.shape[0]:
        raise loaded.error(f"{evaluation.y_key} must hold one label per sample of {evaluation.x_key} "
                           f"({x.shape[0]}), it holds an array of shape {list(y.shape)}", ("eval", "y_key"))
